"""GET /metrics of a real `duly serve` after deliveries went out: parsed as Prometheus text,
its counters match what the database recorded."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from duly.store.db import make_engine
from duly.store.tables import deliveries, delivery_log
from live import live_server

RULES = """
timezone: UTC
rules:
  - name: note
    subject: ticket
    on: {change: status, to: open}
    category: transactional
    to: [owner]
    template: note
  - name: broken
    subject: ticket
    on: {change: status, to: open}
    category: transactional
    to: [owner]
    template: broken
  - name: due
    subject: ticket
    if: "status == 'open'"
    to: [owner]
    template: note
    steps:
      - name: on-the-day
        at: "due_at"
"""


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    r = httpx.get(f"{url}/metrics", timeout=10)  # no API key
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def one(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    found = [v for lab, v in samples[name] if all(lab.get(k) == v2 for k, v2 in labels.items())]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


def test_metrics_match_the_database(tmp_path: Path) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "note.email.txt").write_text("Subject: {{ subject.key }}\nHi\n")
    (tmp_path / "templates" / "broken.email.txt").write_text("{{ attributes.nope.deeper }}\n")
    (tmp_path / "duly.yaml").write_text(RULES)
    with live_server(tmp_path, rules=tmp_path / "duly.yaml") as srv:
        now = datetime.now(UTC)
        h = {"Authorization": f"Bearer {srv.key}"}
        with httpx.Client(base_url=srv.url, headers=h, timeout=10) as c:
            c.put("/v1/recipients/ann", json={"name": "Ann", "email": "ann@example.test"})
            c.put("/v1/recipients/bob", json={"name": "Bob"})  # no address: skipped
            for key, owner, due in (
                # due in 3 s: sent by the dispatcher (a due time already past when
                # planned is skipped by the planner, not counted by the dispatcher)
                ("T1", "ann", now + timedelta(seconds=3)),
                ("T2", "bob", now + timedelta(seconds=3)),
                ("T3", "ann", now + timedelta(days=3)),  # stays pending
            ):
                r = c.put(
                    f"/v1/subjects/ticket/{key}",
                    json={
                        "attributes": {"status": "open", "due_at": due.isoformat()},
                        "recipients": {"owner": owner},
                    },
                )
                assert r.status_code == 200, r.text
            db = make_engine(srv.database)
            try:
                end = time.monotonic() + 15
                while True:  # until the dispatcher recorded the 8 outcomes below
                    with db.connect() as conn:
                        outcomes = conn.execute(
                            sa.select(sa.func.count()).where(delivery_log.c.kind == "outcome")
                        ).scalar_one()
                    if outcomes >= 8 or time.monotonic() > end:
                        break
                    time.sleep(0.1)
                m = scrape(srv.url)
                with db.connect() as conn:
                    logged = Counter(
                        (o, r or "", ch)
                        for o, r, ch in conn.execute(
                            sa.select(
                                delivery_log.c.outcome, delivery_log.c.reason, deliveries.c.channel
                            )
                            .join(deliveries, deliveries.c.id == delivery_log.c.delivery_id)
                            .where(delivery_log.c.kind == "outcome")
                        )
                    )
                    pending = conn.execute(
                        sa.select(sa.func.count()).where(deliveries.c.state == "pending")
                    ).scalar_one()
            finally:
                db.dispose()
        assert httpx.get(f"{srv.url}/v1/stats").status_code == 401  # /metrics alone is public

    # what went out: 3 sent (note T1, note T3, due T1), 3 skipped (Bob has no address),
    # 2 failed rendering (broken T1, T3)
    assert logged == {
        ("sent", "", "email"): 3,
        ("skipped", "no_address", "email"): 3,
        ("failed", "render_error", "email"): 2,
    }
    counted = {
        (lab["outcome"], lab["reason"], lab["channel"]): v for lab, v in m["duly_deliveries_total"]
    }
    assert counted == logged
    assert one(m, "duly_delivery_lateness_seconds_count") == 3
    # each went out within seconds of its due time (milliseconds, usually)
    assert one(m, "duly_delivery_lateness_seconds_bucket", le="5.0") == 3
    assert one(m, "duly_send_seconds_count", channel="email") == 3  # render errors never send
    assert one(m, "duly_claim_seconds_count") >= 1
    assert one(m, "duly_pending") == pending == 1  # T3's due step
    assert one(m, "duly_due_backlog") == 0
    assert one(m, "duly_dispatcher_up") == 1


def test_breakers_show_in_readyz_and_metrics(tmp_path: Path) -> None:
    """The channel circuit breakers' state is reported (spec: Circuit breaker)."""
    with live_server(tmp_path) as srv:
        ready = httpx.get(f"{srv.url}/readyz").json()
        # every built channel: the rules' email, and the inbox one-off reminders may use
        assert ready["channels"] == {"email": "closed", "inbox": "closed"}
        text = httpx.get(f"{srv.url}/metrics").text
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        samples = fams["duly_channel_breaker_open"].samples
        assert {s.labels["channel"]: s.value for s in samples} == {"email": 0, "inbox": 0}
