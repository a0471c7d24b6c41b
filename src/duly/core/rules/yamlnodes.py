"""Reading typed values out of YAML nodes, recording located errors instead of raising.

Why nodes and not loaded dicts: every error in a rule file must say where it is — file,
line and field path (``rules[2].steps[0].at``) — and what was expected. ``yaml.compose``
keeps each node's start mark, so values are read from the nodes here. Each reader returns
the value, or None after recording a :class:`RuleError`, so a caller carries on and the
user gets every problem in one pass.

Reading from nodes also lets us follow YAML 1.2 where YAML 1.1 surprises people:
``yes``/``no``/``on``/``off`` are strings (``holidays: NO`` is Norway, the key ``on:`` is
"on"), and ``12:00`` is the string "12:00", not the number 720.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from duly.core.model import (
    WEEKDAYS,
    AtExpr,
    Duration,
    DurationError,
    DurationTooLong,
    parse_duration,
)
from duly.core.rules.expressions import ExpressionError, compile_expression
from duly.core.validation import readable

__all__ = ["NodeReader", "RuleError", "RuleFileError"]

MAX_YAML_NODES = 200_000  # bounds alias expansion ("billion laughs") in free-form values
MAX_VALUE_DEPTH = 50

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # rule, step, template, group names
IDENT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")  # attribute names
ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_TIME_RE = re.compile(r"^(\d{1,2}):(\d{2})$")
_AT_ATTR_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)")
_AT_SPLIT_RE = re.compile(r"\s*([+-])\s*")
_URL_RE = re.compile(r"^https?://\S+$")
_FULL_DAYS = {d: d[:3] for d in ("monday", "tuesday", "wednesday", "thursday", "friday")}
_FULL_DAYS |= {"saturday": "sat", "sunday": "sun"}
_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null", "timestamp")}
DURATION_HINT = "expected a duration such as 3d or 2h30m"


@dataclass(frozen=True)
class RuleError:
    """One problem in a rule file: where it is and what was expected."""

    file: str
    line: int | None
    field: str
    message: str

    def __post_init__(self) -> None:
        # a key or value may hold a lone surrogate (a YAML "\\ud800" escape): shown as U+FFFD,
        # so the CLI can print the error and the API answer it as JSON
        for name in ("field", "message"):
            object.__setattr__(self, name, readable(getattr(self, name)))

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class RuleFileError(Exception):
    """The rule file is invalid; ``errors`` lists every problem found, one per line in str()."""

    def __init__(self, errors: list[RuleError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


def describe(node: Node) -> str:
    """What a node is, for "expected X, got Y" messages (scalars shown, shortened)."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if is_null(node):
        return "nothing"
    text = str(node.value)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _TAG + "null" and not node.style


def hint(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` when a choice is close to ``word``, else ""."""
    if len(word) > 100:  # no choice is that long; and difflib's time grows with the square
        return ""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def join(path: str, key: str | int) -> str:
    """Field paths: ``join("rules", 2)`` → ``rules[2]``; ``join("rules[2]", "at")`` → ``rules[2].at``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def listing(names: Iterable[str]) -> str:
    names = sorted(names)
    return ", ".join(names) if names else "none"


class NodeReader:
    """Typed readers over YAML nodes for one file; ``errors`` collects every problem."""

    def __init__(self, file: str, *, resolve_env: bool, environ: Mapping[str, str]) -> None:
        self.file = file
        self.resolve_env = resolve_env
        self.environ = environ
        self.errors: list[RuleError] = []
        self._ctor = yaml.SafeLoader("")  # for its scalar constructors and merge keys
        self._budget = MAX_YAML_NODES

    def error(self, node: Node | None, field: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else None
        self.errors.append(RuleError(self.file, line, field, message))

    # -- structure
    def keyed(self, node: MappingNode, field: str) -> dict[str, Node] | None:
        """A mapping's keys → value nodes, with YAML merge keys (``<<``) applied and
        duplicated keys reported (PyYAML would silently keep the last)."""
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, ScalarNode) and key_node.value != "<<":
                if key_node.value in seen:
                    self.error(
                        key_node,
                        join(field, key_node.value),
                        f"duplicate key (first at line {seen[key_node.value]})",
                    )
                seen.setdefault(key_node.value, key_node.start_mark.line + 1)
        try:
            self._ctor.flatten_mapping(node)
        except yaml.YAMLError as e:
            self.error(node, field, f"invalid merge key: {getattr(e, 'problem', e)}")
            return None
        out: dict[str, Node] = {}
        for key_node, value in node.value:
            if not isinstance(key_node, ScalarNode):
                self.error(key_node, field, f"keys must be strings, got {describe(key_node)}")
                continue
            out[str(key_node.value)] = value
        return out

    def mapping(
        self,
        node: Node,
        field: str,
        allowed: Iterable[str],
        *,
        required: Iterable[str] = (),
        elsewhere: Mapping[str, str] | None = None,
    ) -> dict[str, Node] | None:
        """A mapping with known keys. Unknown keys get a "did you mean" hint, or the reason
        from ``elsewhere`` (key → where it belongs); missing required keys are errors."""
        if not isinstance(node, MappingNode):
            self.error(node, field, f"expected a mapping, got {describe(node)}")
            return None
        out = self.keyed(node, field)
        if out is None:
            return None
        allowed = tuple(allowed)
        for key in [k for k in out if k not in allowed]:
            if elsewhere and key in elsewhere:
                why = f"unknown key {key!r}: {elsewhere[key]}"
            else:
                why = f"unknown key {key!r}{hint(key, allowed)}; expected one of: {', '.join(allowed)}"
            self.error(out.pop(key), join(field, key), why)
        for key in required:
            if key not in out:
                self.error(node, field, f"missing required key {key!r}")
        return out

    def entries(self, node: Node, field: str) -> dict[str, Node]:
        """A mapping of user-chosen names (calendars, groups, channels …) → value nodes."""
        if not isinstance(node, MappingNode):
            self.error(node, field, f"expected a mapping of names, got {describe(node)}")
            return {}
        return self.keyed(node, field) or {}

    def seq(self, node: Node, field: str, *, allow_scalar: bool = False) -> list[Node] | None:
        """A list's items; with ``allow_scalar`` a single value reads as a list of one
        (``to: customer`` as ``to: [customer]``)."""
        if isinstance(node, SequenceNode):
            return list(node.value)
        if allow_scalar and isinstance(node, ScalarNode) and not is_null(node):
            return [node]
        self.error(node, field, f"expected a list, got {describe(node)}")
        return None

    # -- scalars
    def text(self, node: Node, field: str, what: str = "a string") -> str | None:
        """A scalar's text as written (so ``12:00`` stays "12:00")."""
        if not isinstance(node, ScalarNode) or is_null(node):
            self.error(node, field, f"expected {what}, got {describe(node)}")
            return None
        if node.tag not in _SCALAR_TAGS:
            self.error(node, field, f"unsupported YAML tag {node.tag!r}")
            return None
        return str(node.value)

    def name(self, node: Node, field: str, what: str = "a name") -> str | None:
        """A name that is safe in a file name and an identity: letters, digits, _ - ."""
        value = self.text(node, field, what)
        if value is None or not self.check_name(value, node, field, what):
            return None
        return value

    def check_name(self, value: str, node: Node, field: str, what: str) -> bool:
        """Whether ``value`` is a valid name (see :meth:`name`); records the error if not.
        Also for names written as keys (groups, channels)."""
        if NAME_RE.match(value):
            return True
        self.error(
            node,
            field,
            f"expected {what} (letters, digits, '_', '-' or '.', starting with a letter or "
            f"a digit), got {value!r}",
        )
        return False

    def ident(self, node: Node, field: str, what: str = "an attribute name") -> str | None:
        value = self.text(node, field, what)
        if value is not None and not IDENT_RE.match(value):
            self.error(node, field, f"expected {what} such as due_at, got {value!r}")
            return None
        return value

    def boolean(self, node: Node, field: str) -> bool | None:
        if isinstance(node, ScalarNode) and not node.style and node.value in ("true", "false"):
            return bool(node.value == "true")
        self.error(node, field, f"expected true or false, got {describe(node)}")
        return None

    def integer(self, node: Node, field: str, *, minimum: int | None = None) -> int | None:
        if not (
            isinstance(node, ScalarNode) and node.tag == _TAG + "int" and ":" not in node.value
        ):
            self.error(node, field, f"expected a whole number, got {describe(node)}")
            return None
        value = int(self._ctor.construct_yaml_int(node))
        if minimum is not None and value < minimum:
            self.error(node, field, f"expected a whole number of at least {minimum}, got {value}")
            return None
        return value

    def number(self, node: Node, field: str) -> float | None:
        numeric = isinstance(node, ScalarNode) and node.tag in (_TAG + "int", _TAG + "float")
        if numeric and ":" not in node.value:
            return float(self._ctor.construct_object(node))
        self.error(node, field, f"expected a number, got {describe(node)}")
        return None

    def duration(self, node: Node, field: str, *, positive: bool = False) -> Duration | None:
        value = self.text(node, field, "a duration such as 3d or 2h30m")
        if value is None:
            return None
        try:
            d = parse_duration(value)
        except DurationTooLong as e:
            self.error(node, field, str(e))
            return None
        except DurationError:
            self.error(node, field, f"{DURATION_HINT}, got {value!r}")
            return None
        if positive and d.total_seconds_approx() == 0:
            self.error(node, field, f"expected a duration longer than zero, got {value!r}")
            return None
        return d

    def time_of_day(self, node: Node, field: str) -> time | None:
        value = self.text(node, field, 'a time of day "HH:MM"')
        return None if value is None else self.hhmm(value, node, field)

    def hhmm(self, value: str, node: Node, field: str) -> time | None:
        m = _TIME_RE.match(value.strip())
        if m and int(m.group(1)) < 24 and int(m.group(2)) < 60:
            return time(int(m.group(1)), int(m.group(2)))
        self.error(node, field, f'expected a time of day "HH:MM" (00:00 to 23:59), got {value!r}')
        return None

    def weekdays(self, node: Node, field: str) -> tuple[str, ...] | None:
        """Days as ``mon`` … ``sun`` (``monday`` is accepted too), in week order."""
        items = self.seq(node, field, allow_scalar=True)
        if items is None:
            return None
        days: set[str] = set()
        ok = True
        for i, item in enumerate(items):
            value = self.text(item, join(field, i), "a day such as mon")
            day = None if value is None else _FULL_DAYS.get(value.lower(), value.lower())
            if day in WEEKDAYS:
                days.add(day)
                continue
            ok = False
            if value is not None:
                self.error(
                    item,
                    join(field, i),
                    f"unknown day {value!r}{hint(value.lower(), WEEKDAYS)}: "
                    f"expected {', '.join(WEEKDAYS)}",
                )
        if ok and not days:
            self.error(node, field, "expected at least one day")
            return None
        return tuple(d for d in WEEKDAYS if d in days) if ok else None

    def timezone(self, node: Node, field: str) -> str | None:
        value = self.text(node, field, "an IANA timezone such as Europe/London")
        if value is None:
            return None
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            self.error(
                node,
                field,
                f"unknown timezone {value!r}{hint(value, available_timezones())}: "
                "expected an IANA name such as Europe/London or UTC",
            )
            return None
        return value

    def expression(self, node: Node, field: str) -> str | None:
        """A condition, compiled now so a bad one is an error at load (spec: Expressions)."""
        if isinstance(node, ScalarNode) and not node.style and node.value in ("true", "false"):
            return str(node.value)  # `if: true` is a (constant) expression too
        value = self.text(node, field, "an expression such as \"status == 'sent'\"")
        if value is None:
            return None
        try:
            compile_expression(value)
        except ExpressionError as e:
            self.error(node, field, f"invalid expression {value!r}: {e}")
            return None
        return value

    def at_expr(self, node: Node, field: str) -> AtExpr | None:
        """``ATTRIBUTE [+|- DURATION]...`` (spec: Steps), for ``at`` and ``repeat.until``."""
        value = self.text(node, field, "a time such as 'due_at - 3d'")
        if value is None:
            return None
        shape = "expected ATTRIBUTE [+|- DURATION]..., such as 'due_at - 3d'"
        m = _AT_ATTR_RE.match(value)
        if m is None:
            self.error(node, field, f"{shape}, got {value!r}")
            return None
        if m.group(1) == "now":
            self.error(node, field, f"{shape}: it counts from a date attribute, not from now")
            return None
        parts = _AT_SPLIT_RE.split(value[m.end() :])
        if parts[0].strip():
            self.error(node, field, f"{shape}, got {value!r}")
            return None
        offsets: list[tuple[int, Duration]] = []
        for sign, text in zip(parts[1::2], parts[2::2], strict=True):
            try:
                offsets.append((1 if sign == "+" else -1, parse_duration(text.strip())))
            except DurationTooLong as e:
                self.error(node, field, f"{e} (in {value!r})")
                return None
            except DurationError:
                self.error(node, field, f"{DURATION_HINT}, got {text.strip()!r} in {value!r}")
                return None
        return AtExpr(m.group(1), tuple(offsets), value.strip())

    def url(self, node: Node, field: str) -> str | None:
        """An http(s) URL, ``${VAR}`` expanded. Not echoed in errors: it may carry a token."""
        value = self.text(node, field, "a URL")
        if value is None:
            return None
        before = len(self.errors)
        expanded = str(self.expand(value, node, field))
        if len(self.errors) > before:
            return None  # a variable is not set: that error is enough
        if (self.resolve_env or not ENV_RE.search(value)) and not _URL_RE.match(expanded):
            self.error(node, field, "expected an http:// or https:// URL")
            return None
        return expanded

    # -- free-form values
    def plain(self, node: Node, field: str, depth: int = 0) -> Any:
        """A free-form value (``set``, webhook ``body``, channel options) as JSON-like data.

        Dates stay ISO strings; ``yes``/``no``/``on``/``off`` and ``12:30`` stay strings.
        """
        self._budget -= 1
        if self._budget < 0 or depth > MAX_VALUE_DEPTH:
            if self._budget == -1 or depth == MAX_VALUE_DEPTH + 1:
                self.error(node, field, "the value is too large or nested too deeply")
            return None
        if isinstance(node, MappingNode):
            items = self.keyed(node, field)
            if items is None:
                return None
            return {k: self.plain(v, join(field, k), depth + 1) for k, v in items.items()}
        if isinstance(node, SequenceNode):
            return [self.plain(v, join(field, i), depth + 1) for i, v in enumerate(node.value)]
        tag = node.tag[len(_TAG) :] if node.tag.startswith(_TAG) else None
        if node.style or tag in ("str", "timestamp"):
            return node.value
        if tag == "null":
            return None
        if tag == "bool":
            return {"true": True, "false": False}.get(node.value.lower(), node.value)
        if tag in ("int", "float"):
            return node.value if ":" in node.value else self._ctor.construct_object(node)
        self.error(node, field, f"unsupported YAML tag {node.tag!r}")
        return None

    def expand(self, value: Any, node: Node, field: str) -> Any:
        """Replace ``${VAR}`` in every string of ``value`` (when ``resolve_env``). A missing
        variable is an error naming the variable, never the text around it."""
        if isinstance(value, dict):
            return {k: self.expand(v, node, join(field, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.expand(v, node, join(field, i)) for i, v in enumerate(value)]
        if not isinstance(value, str) or not self.resolve_env:
            return value

        def replace(m: re.Match[str]) -> str:
            if m.group(1) not in self.environ:
                self.error(node, field, f"environment variable {m.group(1)} is not set")
                return ""
            return self.environ[m.group(1)]

        return ENV_RE.sub(replace, value)
