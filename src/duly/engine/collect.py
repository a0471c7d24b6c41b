"""Data that schedule (cron) rules collect for their templates (spec: `collect`).

``{subject: KIND, if: EXPR}`` lists the live subjects of a kind for which the condition
holds at send time; ``{stats: PERIOD}`` counts the outcomes recorded in a period of the
rule's timezone (today, yesterday, last_week, last_month) by outcome, reason, rule and
channel.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from duly.core.model import Collect, Rule
from duly.core.planner import _expr
from duly.core.rules import timemath
from duly.core.rules.expressions import build_context, condition_holds
from duly.store.db import Connection
from duly.store.reading import outcome_stats
from duly.store.subjects import live_subjects_of_kind

__all__ = ["collect_all", "is_empty", "period"]

MAX_SUBJECTS = 1000  # per collection: a digest, not an export


def period(name: str, now: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end) of a named period, in local calendar days of ``tz``."""
    local = now.astimezone(tz)
    today = local.date()

    def midnight(d: Any) -> datetime:
        return timemath.resolve_local(datetime(d.year, d.month, d.day), tz)

    if name == "today":
        return midnight(today), now
    if name == "yesterday":
        return midnight(today - timedelta(days=1)), midnight(today)
    if name == "last_week":
        monday = today - timedelta(days=today.weekday())
        return midnight(monday - timedelta(days=7)), midnight(monday)
    if name == "last_month":
        first = today.replace(day=1)
        prev = (first - timedelta(days=1)).replace(day=1)
        return midnight(prev), midnight(first)
    raise ValueError(f"unknown stats period {name!r}")


def _subjects(conn: Connection, c: Collect, now: datetime, tz: ZoneInfo) -> list[dict[str, Any]]:
    expr = _expr(c.condition)
    out = []
    for s in live_subjects_of_kind(conn, c.subject):
        kind, key, attrs = s["kind"], s["key"], s["attributes"]
        if expr is not None:
            ctx = build_context(
                attrs,
                now=now,
                tz=tz,
                subject={"kind": kind, "key": key, "attributes": attrs},
            )
            ok, _ = condition_holds(expr, ctx)
            if not ok:
                continue
        out.append(
            {
                "kind": kind,
                "key": key,
                "ref": f"{kind}/{key}",
                "attributes": attrs,
                "recipients": s["recipients"],
            }
        )
        if len(out) >= MAX_SUBJECTS:
            break
    return out


def collect_all(conn: Connection, rule: Rule, now: datetime, tz: ZoneInfo) -> dict[str, Any]:
    """Every collection of ``rule``, by name."""
    data: dict[str, Any] = {}
    for c in rule.collect:
        if c.stats is not None:
            start, end = period(c.stats, now, tz)
            data[c.name] = outcome_stats(conn, start, end)
        else:
            data[c.name] = _subjects(conn, c, now, tz)
    return data


def is_empty(data: dict[str, Any]) -> bool:
    """True when every collection is empty (``skip_empty``)."""
    return all((v.get("total", 0) == 0) if isinstance(v, dict) else not v for v in data.values())
