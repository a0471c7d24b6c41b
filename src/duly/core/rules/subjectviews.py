"""The rule file's ``subjects:`` section: per subject kind, the title pages show for a
subject and the columns lists show (docs/reference/rules.md "Subjects: titles and columns").

```yaml
subjects:
  invoice:
    title: "{{ number }} — {{ customer_name }}"
    columns:
      Customer: customer_name
      Status: status
      Amount: {value: amount, format: money, currency: currency}
      Due: {value: due_at, format: date}
```

Every value is an expression of the rule language (:mod:`duly.core.rules.expressions`,
sandboxed: an attribute name at simplest), over the subject's attributes and ``subject``
(``subject.key``, ``subject.kind``) — never a template engine. A title is text with
``{{ EXPRESSION }}`` parts, or one expression when it has none. Problems are errors of the
file with their line; at run time an expression that fails (a missing attribute) shows
nothing, never an error page.

Only the reading (here) and the values are in the core; how a date or an amount reads is
the page's business (``format``).
"""

from __future__ import annotations

import math
import re
from datetime import date, datetime, tzinfo
from typing import Any

from yaml.nodes import MappingNode, Node

from duly.core.model import SubjectColumn, SubjectView
from duly.core.rules.expressions import (
    EvaluationError,
    ExpressionError,
    build_context,
    compile_expression,
)
from duly.core.rules.yamlnodes import NodeReader, describe, hint, join

__all__ = [
    "FORMATS",
    "MAX_COLUMNS",
    "column_values",
    "read_subjects",
    "subject_context",
    "title_of",
]

FORMATS = ("auto", "text", "date", "datetime", "money", "number", "role")
MAX_COLUMNS = 12
MAX_LABEL = 60
MAX_TITLE = 500
MAX_SHOWN = 200  # characters a title or a text value shows
_PART = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_CODE = re.compile(r"^[A-Z]{3}$")
_COLUMN_KEYS = ("value", "format", "currency", "role")


# --------------------------------------------------------------------------- reading


def read_subjects(r: NodeReader, node: Node) -> dict[str, SubjectView]:
    """``subjects:`` → kind → :class:`SubjectView`; problems recorded on ``r``."""
    out: dict[str, SubjectView] = {}
    for kind, value in r.entries(node, "subjects").items():
        f = join("subjects", kind)
        if not r.check_name(kind, value, f, "a subject kind"):
            continue
        m = r.mapping(value, f, ("title", "columns"))
        if m is None:
            continue
        title = _title(r, m["title"], join(f, "title")) if "title" in m else None
        columns = _columns(r, m["columns"], join(f, "columns")) if "columns" in m else ()
        out[kind] = SubjectView(kind, title, columns)
    return out


def _compile(r: NodeReader, node: Node, field: str, text: str, where: str = "") -> bool:
    try:
        compile_expression(text)
    except ExpressionError as e:
        r.error(node, field, f"invalid expression {text!r}{where}: {e}")
        return False
    return True


def _title(r: NodeReader, node: Node, field: str) -> str | None:
    text = r.text(node, field, 'a title such as "{{ number }} — {{ customer_name }}"')
    if text is None:
        return None
    if not text.strip():
        r.error(node, field, "the title is empty")
        return None
    if len(text) > MAX_TITLE:
        r.error(node, field, f"the title is too long ({len(text)} characters; at most {MAX_TITLE})")
        return None
    if "{{" not in text and "}}" not in text:
        return text if _compile(r, node, field, text) else None
    ok = True
    for literal in _PART.split(text)[::2]:
        if "{{" in literal or "}}" in literal:
            r.error(node, field, f"unmatched '{{{{' or '}}}}' in the title {text!r}")
            return None
    for inner in _PART.findall(text):
        ok = _compile(r, node, field, inner.strip(), " in the title") and ok
    return text if ok else None


def _columns(r: NodeReader, node: Node, field: str) -> tuple[SubjectColumn, ...]:
    if not isinstance(node, MappingNode):
        r.error(node, field, f"expected a mapping of label → value, got {describe(node)}")
        return ()
    items = r.entries(node, field)
    if len(items) > MAX_COLUMNS:
        r.error(node, field, f"at most {MAX_COLUMNS} columns, got {len(items)}")
        return ()
    out: list[SubjectColumn] = []
    for label, spec in items.items():
        f = join(field, label)
        if not label.strip() or len(label) > MAX_LABEL:
            r.error(spec, f, f"expected a column label of 1 to {MAX_LABEL} characters")
            continue
        column = _column(r, label, spec, f)
        if column is not None:
            out.append(column)
    return tuple(out)


def _column(r: NodeReader, label: str, spec: Node, f: str) -> SubjectColumn | None:
    if not isinstance(spec, MappingNode):
        value = r.expression(spec, f)
        return None if value is None else SubjectColumn(label, value)
    m = r.mapping(spec, f, _COLUMN_KEYS)
    if m is None:
        return None
    fmt = "auto"
    if "format" in m:
        given = r.text(m["format"], join(f, "format"), "a format")
        if given is not None and given not in FORMATS:
            r.error(
                m["format"],
                join(f, "format"),
                f"unknown format {given!r}{hint(given, FORMATS)}; expected one of: "
                + ", ".join(FORMATS),
            )
            return None
        fmt = given or fmt
    if ("value" in m) == ("role" in m):
        r.error(spec, f, "give value (an attribute or expression) or role, one of them")
        return None
    if "role" in m:
        role = r.name(m["role"], join(f, "role"), "a role such as customer")
        if fmt not in ("auto", "role"):
            r.error(m["format"], join(f, "format"), "a role column lists recipients: no format")
            return None
        return None if role is None else SubjectColumn(label, format="role", role=role)
    value = r.expression(m["value"], join(f, "value"))
    if fmt == "role":
        r.error(m["format"], join(f, "format"), "format role goes with role:, not value:")
        return None
    currency = ""
    if "currency" in m:
        cf = join(f, "currency")
        if fmt != "money":
            r.error(m["currency"], cf, "currency is only for format: money")
            return None
        code = r.text(m["currency"], cf, "a currency code such as EUR, or an attribute")
        if code is None or not (_CODE.match(code) or _compile(r, m["currency"], cf, code)):
            return None
        currency = code
    return None if value is None else SubjectColumn(label, value, fmt, currency)


# --------------------------------------------------------------------------- values


def subject_context(
    kind: str, key: str, attributes: dict[str, Any], *, now: datetime, tz: tzinfo
) -> dict[str, Any]:
    """What a title's and columns' expressions read: the attributes (ISO dates as instants,
    a date alone at midnight in ``tz``), ``subject`` (kind, key, attributes) and ``now``."""
    subject = {"kind": kind, "key": key, "attributes": attributes}
    return build_context(attributes, now=now, tz=tz, subject=subject)


def _value(text: str, ctx: dict[str, Any]) -> Any:
    try:
        return compile_expression(text).evaluate(ctx)
    except (EvaluationError, ExpressionError):
        return None


def _plain(value: Any) -> str:
    if value is None or isinstance(value, dict | list):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime | date):
        return value.isoformat()[:10]
    return str(value)


def title_of(view: SubjectView | None, ctx: dict[str, Any]) -> str | None:
    """The subject's title, or None when the kind has none or it comes out empty."""
    if view is None or view.title is None:
        return None
    text = view.title
    if "{{" not in text:
        out = _plain(_value(text, ctx))
    else:
        parts = _PART.split(text)
        out = "".join(
            part if i % 2 == 0 else _plain(_value(part.strip(), ctx))
            for i, part in enumerate(parts)
        )
    out = " ".join(out.split())
    return out[:MAX_SHOWN] or None


def column_values(
    view: SubjectView | None, ctx: dict[str, Any], roles: dict[str, Any]
) -> list[dict[str, Any]]:
    """Each column's ``label``, ``format``, ``value`` (None when it failed or is missing;
    a role column's value: its recipient ids) and ``currency`` (money: the code, or None)."""
    out: list[dict[str, Any]] = []
    for c in view.columns if view is not None else ():
        if c.format == "role":
            ids = roles.get(c.role) or ()
            value: Any = [ids] if isinstance(ids, str) else list(ids)
        else:
            value = _value(c.value, ctx)
            if isinstance(value, str):
                value = value[:MAX_SHOWN]
        currency = None
        if c.currency:
            currency = c.currency if _CODE.match(c.currency) else _value(c.currency, ctx)
            currency = currency.upper() if isinstance(currency, str) else None
            currency = currency if currency and _CODE.match(currency) else None
        out.append({"label": c.label, "format": c.format, "value": value, "currency": currency})
    return out
