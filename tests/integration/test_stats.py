"""GET /v1/stats: counts of a known set of outcomes on SQLite and PostgreSQL, the queue now,
speed on 100,000 outcomes, and the HTTP endpoint of a real `duly serve`."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from duly.api.stats import StatsOut, period_stats
from duly.store.db import make_engine
from duly.store.tables import deliveries, delivery_log
from live import live_server


def at(day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, second, tzinfo=UTC)


START, END, NOW = at(2, 0), at(5, 0), at(5, 0)


def delivery(i: int, rule: str, channel: str, state: str, due: datetime) -> dict[str, Any]:
    return {
        "id": i,
        "rule": rule,
        "step": "",
        "occurrence": "0",
        "subject": f"invoice/INV-{i}",
        "recipient": "r1" if channel else "",
        "channel": channel,
        "state": state,
        "category": "reminder",
        "priority": 0,
        "planned_at": due,
        "due_at": due,
        "attempts": 0,
        "error_count": 0,
        "created_at": due,
        "updated_at": due,
    }


def outcome(did: int, when: datetime, out: str, reason: str | None = None) -> dict[str, Any]:
    return {"delivery_id": did, "at": when, "kind": "outcome", "outcome": out, "reason": reason}


@pytest.fixture
def db(db_url: str):  # noqa: ANN201
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def test_counts_a_known_set_of_outcomes(db: sa.Engine) -> None:
    rows = [
        delivery(1, "A", "email", "sent", at(2, 10)),
        delivery(2, "A", "sms", "skipped", at(2, 23)),
        delivery(3, "B", "email", "sent", at(2, 23)),  # failed, then retried and sent
        delivery(4, "B", "email", "sent", at(4, 12)),
        delivery(5, "A", "email", "sent", at(1, 23)),  # outcome before the period
        delivery(6, "A", "email", "sent", at(4, 23)),  # outcome at its end (excluded)
        delivery(7, "set-status", "", "set", at(3, 1)),
        delivery(8, "A", "email", "pending", at(10)),  # pending, not yet due
        delivery(9, "A", "sms", "pending", at(1)),  # pending and overdue
        delivery(10, "B", "email", "sending", at(4, 23)),
        delivery(11, "B", "email", "failed", at(1)),  # failed before the period
    ]
    logs = [
        outcome(1, at(2, 10), "sent"),
        outcome(2, at(2, 23, 59, 59), "skipped", "no_consent"),
        {**outcome(3, at(2, 23, 59), ""), "kind": "attempt", "outcome": None},
        outcome(3, at(3, 0), "failed", "retries_exhausted"),
        outcome(3, at(4, 9), "sent"),
        outcome(4, at(4, 12), "sent"),
        outcome(5, at(1, 23, 59), "sent"),
        outcome(6, at(5, 0), "sent"),
        outcome(7, at(3, 1), "set"),
        outcome(11, at(1, 2), "failed", "permanent_error"),
    ]
    with db.begin() as c:
        c.execute(sa.insert(deliveries), rows)
        c.execute(sa.insert(delivery_log), logs)
    with db.connect() as c:
        got = StatsOut.model_validate(period_stats(c, START, END, NOW)).model_dump(by_alias=True)
    assert got == {
        "from": START,
        "to": END,
        "total": 6,
        "by_outcome": {"failed": 1, "sent": 3, "set": 1, "skipped": 1},
        "by_reason": [
            {"outcome": "failed", "reason": "retries_exhausted", "count": 1},
            {"outcome": "skipped", "reason": "no_consent", "count": 1},
        ],
        "by_rule": [
            {"rule": "B", "total": 3, "outcomes": {"failed": 1, "sent": 2}},
            {"rule": "A", "total": 2, "outcomes": {"sent": 1, "skipped": 1}},
            {"rule": "set-status", "total": 1, "outcomes": {"set": 1}},
        ],
        "by_channel": [
            {"channel": "email", "total": 4, "outcomes": {"failed": 1, "sent": 3}},
            {"channel": None, "total": 1, "outcomes": {"set": 1}},
            {"channel": "sms", "total": 1, "outcomes": {"skipped": 1}},
        ],
        "by_day": [
            {"day": date(2026, 3, 2), "total": 2, "outcomes": {"sent": 1, "skipped": 1}},
            {"day": date(2026, 3, 3), "total": 2, "outcomes": {"failed": 1, "set": 1}},
            {"day": date(2026, 3, 4), "total": 2, "outcomes": {"sent": 2}},
        ],
        "pending": 3,
        "sending": 1,
        "overdue": 1,
        "failed": 1,
        "receipts": {},  # provider reports: counted by the API (duly.store.receipts)
    }


def test_an_empty_period_has_every_day_with_zeros(db: sa.Engine) -> None:
    with db.connect() as c:
        got = period_stats(c, at(2, 12), at(4, 1), NOW)
    assert got["total"] == 0 and got["by_rule"] == [] and got["pending"] == 0
    assert [d["day"] for d in got["by_day"]] == [date(2026, 3, d) for d in (2, 3, 4)]


def _numbers(n: int) -> Any:
    """1..n as a recursive CTE (SQLite and PostgreSQL): rows made by the database itself."""
    cte = sa.select(sa.literal(1).label("i")).cte("n", recursive=True)
    return cte.union_all(sa.select(cte.c.i + 1).where(cte.c.i < n))


def test_fast_on_100k_outcomes(db: sa.Engine) -> None:
    n, days = 100_000, 7
    i = _numbers(n).c.i

    def ts(t: datetime) -> Any:
        return sa.literal(t, deliveries.c.due_at.type)

    channel = sa.case((i % 3 == 0, "email"), (i % 3 == 1, "sms"), else_="push")
    outcome_ = sa.case((i % 4 == 2, "skipped"), (i % 4 == 3, "failed"), else_="sent")
    reason = sa.case((i % 4 == 2, "no_consent"), (i % 4 == 3, "missed"), else_=None)
    with db.begin() as c:
        c.execute(
            sa.insert(deliveries).from_select(
                ["id", "rule", "step", "occurrence", "subject", "recipient", "channel", "state"]
                + ["category", "priority", "planned_at", "due_at", "attempts", "error_count"]
                + ["created_at", "updated_at"],
                sa.select(
                    i,
                    sa.literal("rule-") + sa.cast(i % 20, sa.String),
                    sa.literal(""),
                    sa.literal("0"),
                    sa.literal("invoice/") + sa.cast(i, sa.String),
                    sa.literal("r1"),
                    channel,
                    sa.literal("sent"),
                    sa.literal("reminder"),
                    sa.literal(0),
                    *[ts(at(1))] * 2,
                    *[sa.literal(0)] * 2,
                    *[ts(at(1))] * 2,
                ),
            )
        )
        for d in range(days):  # outcomes spread over 7 days, a day per statement
            c.execute(
                sa.insert(delivery_log).from_select(
                    ["delivery_id", "at", "kind", "outcome", "reason"],
                    sa.select(i, ts(at(2 + d, 12)), sa.literal("outcome"), outcome_, reason).where(
                        i % days == d
                    ),
                )
            )
    with db.connect() as c:
        t0 = time.perf_counter()
        got = period_stats(c, at(1), at(10), NOW)
        took = time.perf_counter() - t0
    assert got["total"] == n
    assert got["by_outcome"] == {"failed": 25_000, "sent": 50_000, "skipped": 25_000}
    assert len(got["by_rule"]) == 20 and len(got["by_channel"]) == 3
    assert [d["total"] for d in got["by_day"]][1:8] == [
        n // days + (1 <= d <= n % days) for d in range(7)
    ]
    print(f"stats over {n} outcomes: {took:.3f} s")
    assert took < 3.0, f"stats over {n} outcomes took {took:.2f} s"


def test_http(tmp_path: Path) -> None:
    with live_server(tmp_path) as srv:
        h = {"Authorization": f"Bearer {srv.key}"}
        with httpx.Client(base_url=srv.url, headers=h, timeout=10) as c:
            assert httpx.get(f"{srv.url}/v1/stats").status_code == 401
            r = c.get("/v1/stats")
            assert r.status_code == 200, r.text
            body = r.json()
            start = datetime.fromisoformat(body["from"])
            end = datetime.fromisoformat(body["to"])
            assert end - start == timedelta(days=7) and len(body["by_day"]) == 8
            r = c.get(
                "/v1/stats",
                params={"from": "2026-03-02T00:00:00Z", "to": "2026-03-04T00:00:00+00:00"},
            )
            assert [d["day"] for d in r.json()["by_day"]] == ["2026-03-02", "2026-03-03"]
            for params, field in (
                ({"from": "2026-03-02T00:00:00"}, "from"),
                ({"from": "2026-03-04T00:00:00Z", "to": "2026-03-02T00:00:00Z"}, "from"),
                ({"from": "2024-01-01T00:00:00Z", "to": "2026-03-02T00:00:00Z"}, "from"),
                ({"to": "yesterday"}, "to"),
            ):
                r = c.get("/v1/stats", params=params)
                assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text
            schema = httpx.get(f"{srv.url}/openapi.json").json()
            assert "StatsOut" in schema["components"]["schemas"]
