"""The values inside a rule or step (docs/reference/rules.md): recipients, channels, windows, ...

:class:`RuleFieldReader` reads one field's node into its model value (``Window``,
``Repeat``, ``Retry``, ``Trigger``, ...) or records a located error and returns None.
Cross-references are checked against the names the loader collected from the top of the
file (``calendars``, ``groups``, ``channels``). :class:`duly.core.rules.rulesyntax.RuleReader`
builds on it to read whole rules and steps.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode

from duly.core.model import (
    Batch,
    Category,
    Collect,
    Repeat,
    Retry,
    Trigger,
    WebhookAction,
    WhatsAppTemplate,
    Window,
)
from duly.core.rules.cron import CronError
from duly.core.rules.cron import parse as parse_cron
from duly.core.rules.whatsappsyntax import read_whatsapp
from duly.core.rules.yamlnodes import IDENT_RE, NAME_RE, NodeReader, describe, hint, join, listing

__all__ = ["IMPLICIT_CHANNELS", "STATS_PERIODS", "RuleFieldReader"]

# Channels a rule may use without configuring them (spec: Channels).
IMPLICIT_CHANNELS = {"email": "outbox", "inbox": "inbox"}
STATS_PERIODS = ("today", "yesterday", "last_week", "last_month")
_EVENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
_HOURS_RE = re.compile(r"^\s*(\d{1,2}:\d{2})\s*-\s*(\d{1,2}:\d{2})\s*$")


class RuleFieldReader(NodeReader):
    """Reads the values of rule and step fields; the loader fills ``calendars``, ``groups``
    and ``channels`` before any rule is read."""

    def __init__(
        self,
        file: str,
        *,
        check_channels: bool,
        resolve_env: bool,
        environ: Mapping[str, str],
    ) -> None:
        super().__init__(file, resolve_env=resolve_env, environ=environ)
        self.check_channels = check_channels
        self.calendars: set[str] = set()
        self.groups: set[str] = set()
        self.channels: set[str] = set()

    def recipients(self, node: Node, field: str) -> tuple[str, ...] | None:
        """Roles, ``group:NAME`` (the group must exist) and ``id:RECIPIENT``."""
        items = self.seq(node, field, allow_scalar=True)
        if items is None:
            return None
        if not items:
            self.error(node, field, "expected at least one recipient")
        out: list[str] = []
        for i, item in enumerate(items):
            fi = join(field, i)
            ref = self.text(item, fi, "a role, group:NAME or id:RECIPIENT")
            if ref is None:
                continue
            if ref.startswith("group:"):
                group = ref[len("group:") :]
                if group not in self.groups:
                    self.error(
                        item,
                        fi,
                        f"unknown group {group!r}{hint(group, self.groups)}; "
                        f"groups defined: {listing(self.groups)}",
                    )
                    continue
            elif ref.startswith("id:"):
                if not ref[len("id:") :].strip():
                    self.error(item, fi, "expected a recipient id after 'id:'")
                    continue
            elif not NAME_RE.match(ref):
                self.error(
                    item,
                    fi,
                    f"expected a role (such as customer), group:NAME or id:RECIPIENT, got {ref!r}",
                )
                continue
            out.append(ref)
        return tuple(out)

    def channel_list(self, node: Node, field: str) -> tuple[str, ...] | None:
        """Channel names; each must be configured, except email and inbox (and except in
        simulations: ``check_channels=False``)."""
        items = self.seq(node, field, allow_scalar=True)
        if items is None:
            return None
        if not items:
            self.error(node, field, "expected at least one channel")
        known = self.channels | set(IMPLICIT_CHANNELS)
        out: list[str] = []
        for i, item in enumerate(items):
            name = self.text(item, join(field, i), "a channel name")
            if name is None:
                continue
            if self.check_channels and name not in known:
                self.error(
                    item,
                    join(field, i),
                    f"channel {name!r} is not configured{hint(name, known)}: add it under "
                    f"'channels:' at the top of the file (configured: {listing(self.channels)}; "
                    "email and inbox need no configuration)",
                )
            elif name in out:
                self.error(item, join(field, i), f"channel {name!r} is listed twice")
            else:
                out.append(name)
        return tuple(out)

    def category(self, node: Node, field: str) -> Category | None:
        value = self.text(node, field, "a category")
        names = [c.value for c in Category]
        if value is not None and value not in names:
            self.error(
                node,
                field,
                f"unknown category {value!r}{hint(value, names)}; expected one of: {', '.join(names)}",
            )
            return None
        return Category(value) if value is not None else None

    def window(self, node: Node, field: str) -> Window | None:
        """``{hours: "HH:MM-HH:MM", days: [...], calendar: NAME}``. A start after the end
        (``22:00-06:00``) is a window open overnight."""
        m = self.mapping(node, field, ("hours", "days", "calendar"))
        if m is None:
            return None
        if not m:
            self.error(node, field, "a window needs hours, days or calendar")
            return None
        start = end = None
        if "hours" in m:
            hours_field = join(field, "hours")
            hours = self.text(m["hours"], hours_field, 'hours such as "09:00-17:00"')
            match = _HOURS_RE.match(hours or "")
            if hours is not None and match is None:
                self.error(
                    m["hours"],
                    hours_field,
                    f'expected hours "HH:MM-HH:MM" such as "09:00-17:00", got {hours!r}',
                )
            elif match is not None:
                start = self.hhmm(match.group(1), m["hours"], hours_field)
                end = self.hhmm(match.group(2), m["hours"], hours_field)
                if start is not None and start == end:
                    self.error(
                        m["hours"],
                        hours_field,
                        f"the window {hours!r} is empty: it starts where it ends",
                    )
        calendar = None
        if "calendar" in m:
            calendar = self.text(m["calendar"], join(field, "calendar"), "a calendar name")
            if calendar is not None and calendar not in self.calendars:
                self.error(
                    m["calendar"],
                    join(field, "calendar"),
                    f"unknown calendar {calendar!r}{hint(calendar, self.calendars)}; "
                    f"calendars defined: {listing(self.calendars)}",
                )
        days = self.weekdays(m["days"], join(field, "days")) if "days" in m else None
        return Window(start=start, end=end, days=days, calendar=calendar)

    def repeat(self, node: Node, field: str) -> Repeat | None:
        m = self.mapping(node, field, ("every", "days", "count", "until"), required=("every",))
        if m is None or "every" not in m:
            return None
        every = self.duration(m["every"], join(field, "every"), positive=True)
        days = self.weekdays(m["days"], join(field, "days")) if "days" in m else None
        count = self.integer(m["count"], join(field, "count"), minimum=1) if "count" in m else None
        until = self.at_expr(m["until"], join(field, "until")) if "until" in m else None
        return Repeat(every=every, days=days, count=count, until=until) if every else None

    def trigger(self, node: Node, field: str) -> Trigger | None:
        """``on: EVENT`` or ``on: {change: ATTR, to: V, from: V}``; ``has_to``/``has_from``
        tell ``to: null`` apart from no ``to``."""
        if isinstance(node, ScalarNode):
            event = self.text(node, field, "an event name such as order.paid")
            if event is not None and not _EVENT_RE.match(event):
                self.error(node, field, f"expected an event name such as order.paid, got {event!r}")
                return None
            return Trigger(event=event) if event else None
        m = self.mapping(node, field, ("change", "to", "from"), required=("change",))
        if m is None or "change" not in m:
            return None
        return Trigger(
            change=self.ident(m["change"], join(field, "change")),
            to=self.plain(m["to"], join(field, "to")) if "to" in m else None,
            has_to="to" in m,
            from_=self.plain(m["from"], join(field, "from")) if "from" in m else None,
            has_from="from" in m,
        )

    def cron(self, node: Node, field: str) -> str | None:
        """5 fields (minute hour day-of-month month day-of-week) or a macro, read as Vixie
        cron reads them (:mod:`duly.core.rules.cron`); an expression that never fires is an
        error here, so the engine never meets one."""
        value = self.text(node, field, 'a cron expression such as "0 8 * * mon-fri"')
        if value is None:
            return None
        text = " ".join(value.split())
        try:
            parse_cron(text)
        except CronError as exc:
            self.error(node, field, str(exc))
            return None
        return text

    def collect(self, node: Node, field: str) -> tuple[Collect, ...]:
        """``{NAME: {subject: KIND, if: EXPR}}`` or ``{NAME: {stats: PERIOD}}``."""
        out: list[Collect] = []
        for name, value in self.entries(node, field).items():
            f = join(field, name)
            m = self.mapping(value, f, ("subject", "if", "stats"))
            if m is None:
                continue
            if ("subject" in m) == ("stats" in m):
                self.error(
                    value, f, "give either subject: KIND (with an optional if) or stats: PERIOD"
                )
                continue
            if "subject" in m:
                kind = self.name(m["subject"], join(f, "subject"), "a subject kind")
                condition = self.expression(m["if"], join(f, "if")) if "if" in m else None
                out.append(Collect(name, subject=kind, condition=condition))
                continue
            if "if" in m:
                self.error(m["if"], join(f, "if"), "if goes with subject, not with stats")
            period = self.text(m["stats"], join(f, "stats"), "a period")
            if period is not None and period not in STATS_PERIODS:
                self.error(
                    m["stats"],
                    join(f, "stats"),
                    f"unknown period {period!r}{hint(period, STATS_PERIODS)}; "
                    f"expected one of: {', '.join(STATS_PERIODS)}",
                )
                continue
            out.append(Collect(name, stats=period))
        return tuple(out)

    def retry(self, node: Node, field: str) -> Retry | None:
        """Keys left out keep their defaults (3 retries, 60s, factor 2)."""
        m = self.mapping(node, field, ("attempts", "delay", "factor"))
        if m is None:
            return None
        d = Retry()
        attempts = (
            self.integer(m["attempts"], join(field, "attempts"), minimum=0)
            if "attempts" in m
            else d.attempts
        )
        delay = self.duration(m["delay"], join(field, "delay")) if "delay" in m else d.delay
        factor = self.number(m["factor"], join(field, "factor")) if "factor" in m else d.factor
        if factor is not None and factor < 1:
            self.error(
                m["factor"],
                join(field, "factor"),
                f"expected a factor of at least 1, got {factor:g}",
            )
            return None
        if attempts is None or delay is None or factor is None:
            return None
        return Retry(attempts=attempts, delay=delay, factor=factor)

    def batch(self, node: Node, field: str) -> Batch | None:
        m = self.mapping(node, field, ("window",), required=("window",))
        if m is None or "window" not in m:
            return None
        window = self.duration(m["window"], join(field, "window"), positive=True)
        return Batch(window) if window is not None else None

    def set_action(self, node: Node, field: str) -> dict[str, Any] | None:
        """``{ATTRIBUTE: VALUE, ...}``."""
        if not isinstance(node, MappingNode):
            self.error(node, field, f"expected a mapping of ATTRIBUTE: VALUE, got {describe(node)}")
            return None
        items = self.keyed(node, field)
        if items is None:
            return None
        if not items:
            self.error(node, field, "expected at least one ATTRIBUTE: VALUE")
        out: dict[str, Any] = {}
        for key, value in items.items():
            if IDENT_RE.match(key):
                out[key] = self.plain(value, join(field, key))
            else:
                self.error(
                    value,
                    join(field, key),
                    f"expected an attribute name such as status, got {key!r}",
                )
        return out

    def whatsapp(self, node: Node, field: str) -> WhatsAppTemplate | None:
        """``whatsapp: {content_sid | template + language, variables, freeform}``."""
        return read_whatsapp(self, node, field)

    def webhook_action(self, node: Node, field: str) -> WebhookAction | None:
        """``{url: ..., body: {...}}``."""
        m = self.mapping(node, field, ("url", "body"), required=("url",))
        if m is None or "url" not in m:
            return None
        url = self.url(m["url"], join(field, "url"))
        body: dict[str, Any] = {}
        if "body" in m and isinstance(m["body"], MappingNode):
            body = self.plain(m["body"], join(field, "body")) or {}
        elif "body" in m:
            self.error(
                m["body"], join(field, "body"), f"expected a mapping, got {describe(m['body'])}"
            )
        return WebhookAction(url, body) if url is not None else None
