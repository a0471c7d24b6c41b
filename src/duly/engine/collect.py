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

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from duly.model import Collect, Rule
from duly.planner import _expr
from duly.rules import timemath
from duly.rules.expressions import build_context, condition_holds
from duly.store.tables import deliveries, delivery_log, subjects

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


def _stats(conn: Connection, start: datetime, end: datetime) -> dict[str, Any]:
    q = (
        sa.select(
            delivery_log.c.outcome,
            delivery_log.c.reason,
            deliveries.c.rule,
            deliveries.c.channel,
            sa.func.count(),
        )
        .join(deliveries, deliveries.c.id == delivery_log.c.delivery_id)
        .where(
            delivery_log.c.kind == "outcome",
            delivery_log.c.at >= start,
            delivery_log.c.at < end,
        )
        .group_by(
            delivery_log.c.outcome, delivery_log.c.reason, deliveries.c.rule, deliveries.c.channel
        )
    )
    out: dict[str, Any] = {
        "from": start,
        "to": end,
        "total": 0,
        "by_outcome": {},
        "by_reason": {},
        "by_rule": {},
        "by_channel": {},
    }
    for outcome, reason, rule, channel, n in conn.execute(q):
        out["total"] += n
        out["by_outcome"][outcome] = out["by_outcome"].get(outcome, 0) + n
        if reason:
            out["by_reason"][reason] = out["by_reason"].get(reason, 0) + n
        r = out["by_rule"].setdefault(rule, {})
        r[outcome] = r.get(outcome, 0) + n
        if channel:
            out["by_channel"][channel] = out["by_channel"].get(channel, 0) + n
    return out


def _subjects(conn: Connection, c: Collect, now: datetime, tz: ZoneInfo) -> list[dict[str, Any]]:
    expr = _expr(c.condition)
    q = (
        sa.select(subjects.c.kind, subjects.c.key, subjects.c.attributes, subjects.c.recipients)
        .where(subjects.c.kind == c.subject, subjects.c.deleted_at.is_(None))
        .order_by(subjects.c.key)
    )
    out = []
    for kind, key, attrs, recips in conn.execute(q):
        if expr is not None:
            ctx = build_context(
                attrs or {},
                now=now,
                tz=tz,
                subject={"kind": kind, "key": key, "attributes": attrs or {}},
            )
            ok, _ = condition_holds(expr, ctx)
            if not ok:
                continue
        out.append(
            {
                "kind": kind,
                "key": key,
                "ref": f"{kind}/{key}",
                "attributes": attrs or {},
                "recipients": recips or {},
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
            data[c.name] = _stats(conn, start, end)
        else:
            data[c.name] = _subjects(conn, c, now, tz)
    return data


def is_empty(data: dict[str, Any]) -> bool:
    """True when every collection is empty (``skip_empty``)."""
    return all((v.get("total", 0) == 0) if isinstance(v, dict) else not v for v in data.values())
