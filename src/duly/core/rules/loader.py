"""Load and validate a rule file (docs/reference/rules.md) into :class:`duly.core.model.RuleFile`.

Every problem in the file is collected and reported at once, each with file, line, field
path and what was expected (see :mod:`duly.core.rules.yamlnodes` for how); a file with any
problem raises :class:`RuleFileError` and nothing half-loaded is returned.

This module reads the file-level sections; :mod:`duly.core.rules.rulesyntax` reads each rule.
Choices where the spec is silent:

- ``rules:`` is required (an empty list is allowed); an empty file is an error.
- ``email`` (an ``outbox``) and ``inbox`` are always present in ``RuleFile.channels`` unless
  configured, so one-off reminders and the UI can use them without configuration.
- ``${VAR}`` is expanded from the environment in channel options and webhook URLs. With
  ``resolve_env=False`` (``duly simulate``, CI checks without secrets) it is left as is.
- ``check_channels=False`` (for ``duly simulate``, which captures every channel) accepts
  channel names that are not configured.
- A webhook target must be signed: ``secret: "${VAR}"`` or ``secret_env: VAR``; a literal
  secret in the file is an error (and is never echoed). ``events`` left out means all.
- ``limits`` take ``reminder`` and ``promotional`` (transactional is never limited);
  ``retention`` keys are outcomes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import date
from pathlib import Path

import holidays as holidays_pkg
import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

from duly.core.model import (
    WEEKDAYS,
    Calendar,
    Category,
    ChannelConfig,
    Duration,
    DurationError,
    Outcome,
    RenderLimits,
    RuleFile,
    WebhookTarget,
    parse_duration,
)
from duly.core.rules.rulesyntax import IMPLICIT_CHANNELS, RuleReader
from duly.core.rules.subjectviews import read_subjects
from duly.core.rules.yamlnodes import ENV_RE, RuleError, RuleFileError, describe, hint, join
from duly.core.templatenames import is_locale

__all__ = ["RuleError", "RuleFileError", "check_main", "load_rules", "load_rules_text"]

TOP_KEYS = (
    "timezone",
    "calendars",
    "groups",
    "channels",
    "limits",
    "retention",
    "webhooks",
    "allow_private_targets",
    "render",
    "template_language",
    "subjects",
    "rules",
)
CHANNEL_TYPES = (
    "smtp",
    "outbox",
    "inbox",
    "webhook",
    "twilio-sms",
    "twilio-whatsapp",
    "whatsapp-cloud",
    "apprise",
    # email provider APIs
    "sendgrid",
    "postmark",
    "mailgun",
    "ses",
)
_LIMIT_RE = re.compile(r"^\s*(\d+)\s*/\s*(\S+)\s*$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EVENT_RE = re.compile(r"^[A-Za-z0-9*][A-Za-z0-9_.:*-]*$")
_SECONDS_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}
# render: key -> (lowest, highest, as said in an error)
_RENDER_RANGES = {
    "timeout": (0.1, 300.0, "100ms to 300s"),
    "max_output": (1_000, 1_000_000_000, "1KB to 1GB"),
    "max_memory": (32_000_000, 64_000_000_000, "32MB to 64GB"),
    "workers": (1, 32, "1 to 32"),
}


class _Loader(RuleReader):
    """One pass over one file."""

    def load(self, text: str) -> RuleFile | None:
        root = self.compose(text)
        if root is None:
            return None
        top = self.mapping(root, "", TOP_KEYS, required=("rules",))
        if top is None:
            return None
        # Sections that rules refer to are read first, whatever their order in the file.
        tz = self.timezone(top["timezone"], "timezone") if "timezone" in top else None
        calendars = self.calendars_section(top["calendars"]) if "calendars" in top else {}
        groups = self.groups_section(top["groups"]) if "groups" in top else {}
        channels = self.channels_section(top["channels"]) if "channels" in top else {}
        for name, kind in IMPLICIT_CHANNELS.items():
            channels.setdefault(name, ChannelConfig(name, kind))
        limits = self.limits_section(top["limits"]) if "limits" in top else {}
        retention = self.retention_section(top["retention"]) if "retention" in top else {}
        webhooks = self.webhooks_section(top["webhooks"]) if "webhooks" in top else ()
        allow_private = False
        if "allow_private_targets" in top:
            allow_private = bool(
                self.boolean(top["allow_private_targets"], "allow_private_targets")
            )
        render = self.render_section(top["render"]) if "render" in top else RenderLimits()
        subject_views = read_subjects(self, top["subjects"]) if "subjects" in top else {}
        rules = self.rules_section(top["rules"]) if "rules" in top else ()
        language = None
        if "template_language" in top:
            language = self.template_language(top["template_language"])
        self.check_variants()
        if self.errors:
            return None
        return RuleFile(
            path=self.file,
            timezone=tz or "UTC",
            calendars=calendars,
            groups=groups,
            channels=channels,
            rules=rules,
            limits=limits,
            retention=retention,
            webhooks=webhooks,
            allow_private_targets=allow_private,
            render=render,
            template_language=language,
            subjects=subject_views,
            templates_dir=str(self.templates_dir) if self.templates_dir is not None else None,
        )

    def compose(self, text: str) -> MappingNode | None:
        """The top-level mapping node, or None after a clean error (syntax, empty, shape)."""
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark is not None else None
            detail = "; ".join(str(p) for p in (e.context, e.problem) if p)
            self.errors.append(RuleError(self.file, line, "", f"invalid YAML: {detail}"))
            return None
        except yaml.YAMLError as e:
            self.errors.append(RuleError(self.file, None, "", f"invalid YAML: {e}"))
            return None
        except RecursionError:  # PyYAML composes nested lists and mappings recursively
            self.errors.append(
                RuleError(self.file, None, "", "invalid YAML: lists or mappings nested too deeply")
            )
            return None
        if root is None:
            self.errors.append(
                RuleError(
                    self.file, None, "", "the file is empty: expected a mapping with 'rules:'"
                )
            )
            return None
        if not isinstance(root, MappingNode):
            self.error(
                root, "", f"expected a mapping with 'rules:' at the top, got {describe(root)}"
            )
            return None
        return root

    def template_language(self, node: Node) -> str | None:
        """A locale Babel knows (``en``, ``en-GB``): the language of templates without one."""
        value = self.text(node, "template_language", "a locale such as en or en-GB")
        if value is not None and not is_locale(value.strip()):
            self.error(
                node, "template_language", f"expected a locale such as en or en-GB, got {value!r}"
            )
            return None
        return value.strip() if value is not None else None

    def calendars_section(self, node: Node) -> dict[str, Calendar]:
        out: dict[str, Calendar] = {}
        for name, value in self.entries(node, "calendars").items():
            f = join("calendars", name)
            self.calendars.add(name)  # known even if invalid: no second error where it is used
            m = self.mapping(value, f, ("days", "holidays", "closed"))
            if m is None:
                continue
            days = self.weekdays(m["days"], join(f, "days")) if "days" in m else None
            country = self.holidays(m["holidays"], join(f, "holidays")) if "holidays" in m else None
            closed: list[str] = []
            closed_items = self.seq(m["closed"], join(f, "closed")) if "closed" in m else []
            for i, item in enumerate(closed_items or []):
                fi = join(join(f, "closed"), i)
                text = self.text(item, fi, "a date YYYY-MM-DD")
                try:
                    closed.append(date.fromisoformat((text or "").strip()).isoformat())
                except ValueError:
                    if text is not None:
                        self.error(item, fi, f"expected a date YYYY-MM-DD, got {text!r}")
            out[name] = Calendar(
                name, days=days or WEEKDAYS[:5], holidays=country, closed=tuple(closed)
            )
        return out

    def holidays(self, node: Node, field: str) -> str | None:
        """A country (ISO 3166) known to the ``holidays`` package, optionally with a
        subdivision: ``GB``, ``GB-SCT``, ``US-CA``."""
        value = self.text(node, field, "a country code such as GB")
        if value is None:
            return None
        code = value.strip().upper()
        country, _, subdiv = code.partition("-")
        try:
            holidays_pkg.country_holidays(country, subdiv=subdiv or None)
        except (NotImplementedError, KeyError, ValueError):
            what = "subdivision" if subdiv else "country"
            self.error(
                node,
                field,
                f"unknown holiday {what} {value!r}: expected an ISO 3166 code known to the "
                "'holidays' package, such as GB, US, DE or GB-SCT",
            )
            return None
        return code

    def groups_section(self, node: Node) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {}
        for name, value in self.entries(node, "groups").items():
            f = join("groups", name)
            self.groups.add(name)
            self.check_name(name, value, f, "a group name")
            ids = [
                self.text(item, join(f, i), "a recipient id")
                for i, item in enumerate(self.seq(value, f) or [])
            ]
            out[name] = tuple(i for i in ids if i is not None)
        return out

    def channels_section(self, node: Node) -> dict[str, ChannelConfig]:
        """Channel name → config. Option values are never echoed in errors: they may hold
        secrets, written into the file or expanded from the environment."""
        out: dict[str, ChannelConfig] = {}
        for name, value in self.entries(node, "channels").items():
            f = join("channels", name)
            self.channels.add(name)
            self.check_name(name, value, f, "a channel name")
            if not isinstance(value, MappingNode):
                self.error(value, f, 'expected a mapping such as {type: smtp, url: "${SMTP_URL}"}')
                continue
            items = self.keyed(value, f) or {}
            if "type" not in items:
                self.error(
                    value, f, f"missing required key 'type' (one of: {', '.join(CHANNEL_TYPES)})"
                )
                continue
            kind = self.text(items.pop("type"), join(f, "type"), "a channel type")
            if kind is not None and kind not in CHANNEL_TYPES:
                self.error(
                    value,
                    join(f, "type"),
                    f"unknown channel type {kind!r}{hint(kind, CHANNEL_TYPES)}; "
                    f"expected one of: {', '.join(CHANNEL_TYPES)}",
                )
                continue
            options = {
                k: self.expand(self.plain(v, join(f, k)), v, join(f, k)) for k, v in items.items()
            }
            if kind is not None:
                out[name] = ChannelConfig(name, kind, options)
        return out

    def limits_section(self, node: Node) -> dict[str, str]:
        """``{category: "COUNT/DURATION"}`` per recipient (spec: Limits)."""
        out: dict[str, str] = {}
        for key, value in self.entries(node, "limits").items():
            f = join("limits", key)
            if key == Category.transactional:
                self.error(
                    value, f, "transactional messages are never rate-limited; remove this limit"
                )
                continue
            if key not in (Category.reminder, Category.promotional):
                self.error(
                    value,
                    f,
                    f"unknown category {key!r}{hint(key, [c.value for c in Category])}; "
                    "expected reminder or promotional",
                )
                continue
            text = self.text(value, f, 'a limit such as "3/1d"')
            m = _LIMIT_RE.match(text or "")
            try:
                count, per = (int(m.group(1)), parse_duration(m.group(2))) if m else (0, None)
            except DurationError:
                count, per = 0, None
            if count < 1 or per is None or per.total_seconds_approx() == 0:
                if text is not None:
                    self.error(
                        value, f, f'expected COUNT/DURATION such as "3/1d" or "1/7d", got {text!r}'
                    )
                continue
            out[key] = f"{count}/{per.text}"
        return out

    def retention_section(self, node: Node) -> dict[str, Duration]:
        """How long records of each outcome are kept: ``{sent: 90d, failed: 180d}``."""
        out: dict[str, Duration] = {}
        outcomes = [o.value for o in Outcome]
        for key, value in self.entries(node, "retention").items():
            f = join("retention", key)
            if key not in outcomes:
                self.error(
                    value,
                    f,
                    f"unknown outcome {key!r}{hint(key, outcomes)}; expected one of: {', '.join(outcomes)}",
                )
                continue
            d = self.duration(value, f, positive=True)
            if d is not None:
                out[key] = d
        return out

    def render_section(self, node: Node) -> RenderLimits:
        """What one render may cost: ``{timeout: 2s, max_output: 10MB, max_memory: 256MB,
        workers: 2}``; sizes in B, KB, MB, GB (or KiB, MiB, GiB), a timeout in ms, s or m."""
        values: dict[str, float] = {}
        keys = tuple(_RENDER_RANGES)
        for key, value in (self.mapping(node, "render", keys) or {}).items():
            f = join("render", key)
            text = value.value if isinstance(value, ScalarNode) else None
            if key == "workers":
                n = self.integer(value, f, minimum=1)
                if n is None:
                    continue
                got: float | None = n
            elif key == "timeout":
                m = _SECONDS_RE.match(text or "")
                scale = {"ms": 0.001, "m": 60.0}.get(m.group(2) or "s", 1.0) if m else 0
                got = float(m.group(1)) * scale if m else None
                expected = "a time such as 2s, 500ms or 1m"
            else:
                m = _SIZE_RE.match(text or "")
                got = float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()] if m else None
                expected = "a size such as 10MB, 512KB or 1GiB"
            if got is None:
                self.error(value, f, f"expected {expected}, got {describe(value)}")
                continue
            low, high, said = _RENDER_RANGES[key]
            if not low <= got <= high:
                self.error(value, f, f"expected {said}, got {text}")
                continue
            values[key] = got
        d = RenderLimits()
        return RenderLimits(
            timeout=values.get("timeout", d.timeout),
            max_output=int(values.get("max_output", d.max_output)),
            max_memory=int(values.get("max_memory", d.max_memory)),
            workers=int(values.get("workers", d.workers)),
        )

    def webhooks_section(self, node: Node) -> tuple[WebhookTarget, ...]:
        """``[{url, events: [...], secret: "${VAR}" | secret_env: VAR}]``."""
        out: list[WebhookTarget] = []
        for i, item in enumerate(self.seq(node, "webhooks") or []):
            f = join("webhooks", i)
            if not isinstance(item, MappingNode):  # not echoed: a URL may carry a token
                self.error(item, f, "expected a mapping such as {url: ..., secret_env: VAR}")
                continue
            m = self.mapping(item, f, ("url", "events", "secret", "secret_env"), required=("url",))
            if m is None:
                continue
            url = self.url(m["url"], join(f, "url")) if "url" in m else None
            events: list[str] = []
            items = (
                self.seq(m["events"], join(f, "events"), allow_scalar=True) if "events" in m else []
            )
            for j, ev in enumerate(items or []):
                fj = join(join(f, "events"), j)
                name = self.text(ev, fj, "an event name such as delivery.sent")
                if name is not None and not _EVENT_RE.match(name):
                    self.error(
                        ev, fj, f"expected an event name such as delivery.sent, got {name!r}"
                    )
                elif name is not None:
                    events.append(name)
            secret_env = self.secret_env(m, f, item)
            if url is not None and secret_env is not None:
                out.append(WebhookTarget(url, tuple(events), secret_env))
        return tuple(out)

    def secret_env(self, m: dict[str, Node], field: str, where: Node) -> str | None:
        """The variable holding a webhook's signing secret. The secret itself never sits in
        the file (spec: Channels): a literal is an error that does not echo it."""
        how = 'write secret: "${VAR}" or secret_env: VAR'
        if "secret" in m and "secret_env" in m:
            self.error(
                m["secret_env"], join(field, "secret_env"), "give secret or secret_env, not both"
            )
            return None
        if "secret" in m:
            node, key_field = m["secret"], join(field, "secret")
            env = (
                ENV_RE.fullmatch(str(node.value).strip()) if isinstance(node, ScalarNode) else None
            )
            if env is None:
                self.error(node, key_field, f"a secret never sits in the file itself: {how}")
                return None
            var: str | None = env.group(1)
        elif "secret_env" in m:
            node, key_field = m["secret_env"], join(field, "secret_env")
            var = self.text(node, key_field, "an environment variable name")
            if var is not None and not _ENV_NAME_RE.match(var):
                self.error(
                    node,
                    key_field,
                    f"expected an environment variable name such as WEBHOOK_SECRET, got {var!r}",
                )
                return None
        else:
            self.error(where, field, f"missing the signing secret (webhooks are signed): {how}")
            return None
        if var is not None and self.resolve_env and var not in self.environ:
            self.error(node, key_field, f"environment variable {var} is not set")
            return None
        return var


# --------------------------------------------------------------------------- public API


def load_rules_text(
    text: str,
    *,
    path: str = "duly.yaml",
    templates_dir: str | None = None,
    check_templates: bool = True,
    resolve_env: bool = True,
    environ: Mapping[str, str] | None = None,
    check_channels: bool = True,
) -> RuleFile:
    """Validate rule-file text and build the :class:`RuleFile`.

    ``path`` names the file in errors and locates ``templates/`` beside it, unless
    ``templates_dir`` is given. ``check_channels=False`` accepts channel names that are not
    configured (``duly simulate`` captures every channel). Raises :class:`RuleFileError`
    listing every problem, in line order.
    """
    tdir = Path(templates_dir) if templates_dir is not None else Path(path).parent / "templates"
    loader = _Loader(
        path,
        templates_dir=tdir.absolute(),
        check_templates=check_templates,
        check_channels=check_channels,
        resolve_env=resolve_env,
        environ=os.environ if environ is None else environ,
    )
    rule_file = loader.load(text)
    if loader.errors or rule_file is None:
        errors = sorted(
            loader.errors or [RuleError(path, None, "", "invalid rule file")],
            key=lambda e: e.line or 0,
        )
        raise RuleFileError(errors)
    return rule_file


def load_rules(
    path: str | Path,
    *,
    check_templates: bool = True,
    resolve_env: bool = True,
    environ: Mapping[str, str] | None = None,
    check_channels: bool = True,
) -> RuleFile:
    """Load the rule file at ``path``, with templates from ``templates/`` beside it.

    An unreadable file is a :class:`RuleFileError` too, so callers handle one exception.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        error = RuleError(str(p), None, "", f"the rule file is not UTF-8 text: {e.reason}")
        raise RuleFileError([error]) from None
    except OSError as e:
        error = RuleError(str(p), None, "", f"cannot read the rule file: {e.strerror or e}")
        raise RuleFileError([error]) from None
    return load_rules_text(
        text,
        path=str(p),
        check_templates=check_templates,
        resolve_env=resolve_env,
        environ=environ,
        check_channels=check_channels,
    )


def check_main(path: str | Path, *, check_templates: bool = True, resolve_env: bool = True) -> int:
    """``duly rules check FILE``: print "OK: N rules" and return 0, or print every error
    (one per line, then how many) and return 2."""
    try:
        rule_file = load_rules(path, check_templates=check_templates, resolve_env=resolve_env)
    except RuleFileError as e:
        for error in e.errors:
            print(error)
        n = len(e.errors)
        print(f"{n} error{'s' if n != 1 else ''} in {path}")
        return 2
    n = len(rule_file.rules)
    print(f"OK: {n} rule{'s' if n != 1 else ''}")
    return 0
