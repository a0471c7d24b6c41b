"""Server time of every web UI page with 100,000 deliveries stored, SQLite and PostgreSQL
side by side.

    .venv/bin/python bench/ui.py                   # both backends (PostgreSQL from
                                                   # $DULY_TEST_DATABASE_URL), 100k deliveries
    .venv/bin/python bench/ui.py --postgres none   # SQLite only
    .venv/bin/python bench/ui.py --deliveries 20000 --repeat 5

What is measured: the app's own ``Server-Timing: app;dur=…`` header (time from the request
entering the UI app to its answer starting: sessions, CSRF, queries, template rendering),
for pages requested by a signed-in admin through Starlette's TestClient in this process
(no network, no browser). Each page is requested once to warm caches, then ``--repeat``
times; the table shows the median and the worst. Target: every page under 200 ms.

The data: ``--deliveries`` rows (default 100,000) over 10,000 subjects and 2,000 recipients,
spread over the past 60 days and the next 30 (about 75 % sent, 10 % pending, 5 % failed,
5 % skipped, 5 % cancelled), each finished one with its outcome in delivery_log, plus 200
one-off reminders — inserted directly with SQLAlchemy Core (planning them through the
engine would take minutes and is measured by bench/api.py). The figures are printed and
saved to ``bench/out/ui-*.txt``.

Figures on this machine (2 CPUs, load average 1.6; 2026-11-26 14:17):

    page                                        SQLite                PostgreSQL
    dashboard                           22.1 / 23.2 ms            22.2 / 23.1 ms
    upcoming                              6.0 / 6.6 ms             8.4 / 13.2 ms
    upcoming, filtered                    6.0 / 6.8 ms            12.1 / 13.2 ms
    subjects                              4.5 / 5.3 ms             9.3 / 13.7 ms
    subjects, search                      4.7 / 6.4 ms             8.8 / 12.9 ms
    subject                               4.5 / 8.2 ms              7.0 / 9.7 ms
    reminders                             5.7 / 6.1 ms              7.8 / 8.2 ms
    deliveries                            5.9 / 6.8 ms              7.6 / 8.2 ms
    deliveries, failed                    6.2 / 7.7 ms             8.4 / 11.2 ms
    deliveries, overdue                   2.7 / 4.1 ms            16.1 / 17.5 ms
    delivery                              3.3 / 4.0 ms              5.4 / 6.9 ms
    templates                             2.7 / 3.7 ms              4.1 / 4.4 ms
    rules                                 3.5 / 4.9 ms              5.1 / 7.5 ms
    recipients                            5.5 / 6.6 ms              5.9 / 7.8 ms
    recipients, search                    4.5 / 5.4 ms              5.5 / 5.9 ms
    recipient                             5.9 / 6.4 ms              6.3 / 6.8 ms
    outbox                                3.8 / 4.9 ms              3.6 / 4.8 ms
    outbox, search (none)             121.4 / 124.1 ms            48.8 / 51.0 ms
    deliveries, channel (none)            13.8 / 14.1 ms            14.0 / 14.6 ms

Every page is well under the target but one: searching the outbox for text that matches
nothing reads every sent message (a substring of the title or address cannot use an
index), so it grows with the outbox — 121 ms at 75,000 sent messages on SQLite; a
full-text index is the way past that.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import make_url

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from duly.app import create_app  # noqa: E402
from duly.core.rules.loader import load_rules  # noqa: E402
from duly.engine.runtime import BUNDLED_RULES, build_runtime  # noqa: E402
from duly.store import tables as T  # noqa: E402
from duly.web.users import UserStore  # noqa: E402

TARGET_MS = 200.0
USER = ("bench", "bench password 1")
RULES = ["invoice-reminders", "payment-receipt", "appointment-reminders"]
STEPS = {
    "invoice-reminders": ["due-soon", "overdue"],
    "payment-receipt": [""],
    "appointment-reminders": ["day-before", "two-hours"],
}


def seed(db: sa.Engine, n: int, now: datetime) -> dict[str, Any]:
    rnd = random.Random(7)
    n_subjects, n_recipients = 10_000, 2_000
    recips = [
        {
            "id": f"r{i:05d}",
            "name": f"Recipient {i}",
            "email": f"r{i}@example.com",
            "phone": None,
            "timezone": rnd.choice(
                ["Europe/London", "America/New_York", "Asia/Tokyo", "Europe/Paris"]
            ),
            "locale": "en_GB",
            "addresses": {},
            "consent": {},
            "created_at": now,
            "updated_at": now,
        }
        for i in range(n_recipients)
    ]
    subjects = [
        {
            "kind": "invoice" if i % 2 else "appointment",
            "key": f"K-{i:06d}",
            "attributes": {"status": "sent", "amount": i},
            "recipients": {},
            "revision": 1,
            "hold_until": None,
            "acknowledged": [],
            "deleted_at": None,
            "created_at": now,
            "updated_at": now,
        }
        for i in range(n_subjects)
    ]
    rows, logs = [], []
    for i in range(n):
        rule = RULES[i % 3]
        subj = subjects[i % n_subjects]
        r = rnd.random()
        state = (
            "sent"
            if r < 0.75
            else "pending"
            if r < 0.85
            else "failed"
            if r < 0.90
            else "skipped"
            if r < 0.95
            else "cancelled"
        )
        if state == "pending":
            due = now + timedelta(seconds=rnd.randint(60, 30 * 86400))
        else:
            due = now - timedelta(seconds=rnd.randint(60, 60 * 86400))
        rows.append(
            {
                "id": i + 1,
                "rule": rule,
                "step": STEPS[rule][i % len(STEPS[rule])],
                "occurrence": str(i),
                "subject": f"{subj['kind']}/{subj['key']}",
                "recipient": f"r{i % n_recipients:05d}",
                "channel": "email",
                "state": state,
                "reason": {"skipped": "quiet_hours", "cancelled": "condition_false"}.get(state),
                "category": "transactional" if rule == "payment-receipt" else "reminder",
                "priority": 0,
                "planned_at": due,
                "due_at": due,
                "deadline_at": None,
                "attempts": 0 if state == "pending" else 1,
                "last_error": "550 5.1.1 mailbox unavailable" if state == "failed" else None,
                "error_count": 1 if state == "failed" else 0,
                "title": f"Message {i}",
                "body_text": f"Hello, this is message {i}.",
                "body_html": f"<p>Hello, this is message {i}.</p>" if state == "sent" else None,
                "to_address": f"r{i % n_recipients}@example.com",
                "message_id": f"<{i}@bench>" if state == "sent" else None,
                "receipt": None,
                "sent_at": due if state == "sent" else None,
                "changes": None,
                "created_at": due,
                "updated_at": due,
            }
        )
        if state != "pending":
            logs.append(
                {
                    "delivery_id": i + 1,
                    "at": due,
                    "kind": "outcome",
                    "outcome": state,
                    "reason": rows[-1]["reason"],
                    "attempt": 1,
                    "error": rows[-1]["last_error"],
                    "planned_at": due,
                }
            )
    reminders = [
        {
            "title": f"Reminder {i}",
            "message": "Please check.",
            "send_at": now + timedelta(days=1),
            "channels": ["email"],
            "recipients": [f"r{i:05d}"],
            "subject": None,
            "category": "reminder",
            "created_at": now,
            "updated_at": now,
        }
        for i in range(200)
    ]
    with db.begin() as conn:
        conn.execute(sa.insert(T.recipients), recips)
        conn.execute(sa.insert(T.subjects), subjects)
        for k in range(0, len(rows), 5_000):
            conn.execute(sa.insert(T.deliveries), rows[k : k + 5_000])
        for k in range(0, len(logs), 5_000):
            conn.execute(sa.insert(T.delivery_log), logs[k : k + 5_000])
        conn.execute(sa.insert(T.reminders), reminders)
    if db.dialect.name == "postgresql":
        with db.begin() as conn:
            conn.exec_driver_sql(
                "SELECT setval(pg_get_serial_sequence('deliveries', 'id'), "
                "(SELECT max(id) FROM deliveries))"
            )
            conn.exec_driver_sql("ANALYZE")
    else:
        with db.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    today = now.astimezone(ZoneInfo("Europe/London")).date().isoformat()  # the viewer's zone
    return {"delivery": n // 2, "subject": subjects[42], "recipient": "r00042", "today": today}


def pages(ids: dict[str, Any]) -> list[tuple[str, str]]:
    s = ids["subject"]
    return [
        ("dashboard", "/"),
        ("upcoming", "/upcoming"),
        ("upcoming, filtered", "/upcoming?rule=invoice-reminders&channel=email"),
        ("subjects", "/subjects"),
        ("subjects, search", "/subjects?kind=invoice&q=K-0004"),
        ("subject", f"/subjects/{s['kind']}/{quote(s['key'])}"),
        ("reminders", "/reminders"),
        ("deliveries", "/deliveries"),
        ("deliveries, failed", "/deliveries?state=failed"),
        ("deliveries, overdue", "/deliveries?state=overdue"),
        ("delivery", f"/deliveries/{ids['delivery']}"),
        ("templates", "/templates"),
        ("rules", "/rules"),
        ("recipients", "/recipients"),
        ("recipients, search", "/recipients?q=r0004"),
        ("recipient", f"/recipients/{ids['recipient']}"),
        ("outbox", "/outbox"),
        ("outbox, search (none)", "/outbox?q=no-such-text"),
        ("deliveries, channel (none)", "/deliveries?channel=sms"),
        (
            "deliveries, sent today",
            "/deliveries?state=sent&finished_from=" + ids.get("today", "2026-01-01"),
        ),
        ("dashboard, live part", "/?part=live"),
    ]


def measure(url: str, n: int, repeat: int) -> dict[str, tuple[float, float, int] | None]:
    import warnings

    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

    rf = load_rules(str(BUNDLED_RULES))
    rt = build_runtime(rf, url)
    now = datetime.now(UTC)
    t0 = time.perf_counter()
    ids = seed(rt.db, n, now)
    print(f"  seeded {n:,} deliveries in {time.perf_counter() - t0:.1f} s", flush=True)
    UserStore(rt.db).create(USER[0], USER[1], "admin", now)
    client = TestClient(create_app(rt), base_url="http://127.0.0.1:8000")
    import re

    page = client.get("/login").text
    token = re.search(r'name="csrftoken" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    client.post("/login", data={"csrftoken": token, "username": USER[0], "password": USER[1]})
    out: dict[str, tuple[float, float, int] | None] = {}
    for name, path in pages(ids):
        r = client.get(path)
        if r.status_code == 404 and "no such page" in r.text.lower():
            out[name] = None  # page not built
            continue
        times = []
        for _ in range(repeat):
            r = client.get(path)
            dur = r.headers.get("server-timing", "app;dur=nan").split("dur=")[1]
            times.append(float(dur))
        out[name] = (statistics.median(times), max(times), r.status_code)
    client.close()
    rt.db.dispose()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--deliveries", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument(
        "--postgres",
        default=os.environ.get("DULY_TEST_DATABASE_URL", ""),
        help="server URL for a scratch database, or 'none'",
    )
    args = ap.parse_args()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as d:
        print("SQLite:", flush=True)
        results["SQLite"] = measure(f"sqlite:///{d}/ui.db", args.deliveries, args.repeat)
    if args.postgres and args.postgres != "none":
        server = make_url(args.postgres).set(drivername="postgresql+psycopg")
        admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
        name = f"duly_bench_ui_{os.getpid()}"
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            print("PostgreSQL:", flush=True)
            results["PostgreSQL"] = measure(
                server.set(database=name).render_as_string(hide_password=False),
                args.deliveries,
                args.repeat,
            )
        finally:
            with admin.connect() as c:
                c.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                )
                c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
            admin.dispose()
    backends = list(results)
    load = os.getloadavg()[0]
    lines = [
        f"duly web UI, server time per page with {args.deliveries:,} deliveries "
        f"(median / worst of {args.repeat}; target < {TARGET_MS:.0f} ms); "
        f"{datetime.now():%Y-%m-%d %H:%M}, load average {load:.1f} on {os.cpu_count()} CPUs",
        "",
        f"{'page':<24}" + "".join(f"{b:>26}" for b in backends),
    ]
    misses = 0
    for name, _ in pages({"delivery": 1, "subject": {"kind": "k", "key": "k"}, "recipient": "r"}):
        cells = []
        for b in backends:
            v = results[b].get(name)
            if v is None:
                cells.append(f"{'(no page)':>26}")
                continue
            med, worst, status = v
            flag = "" if worst < TARGET_MS and status == 200 else " MISS"
            misses += bool(flag)
            extra = "" if status == 200 else f" [{status}]"
            cells.append(f"{f'{med:.1f} / {worst:.1f} ms{extra}{flag}':>26}")
        lines.append(f"{name:<24}" + "".join(cells))
    text = "\n".join(lines)
    print("\n" + text)
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / f"ui-{datetime.now():%Y%m%d-%H%M%S}.txt").write_text(text + "\n")
    return 1 if misses else 0


if __name__ == "__main__":
    raise SystemExit(main())
