"""The header search (duly.store.search) with 100,000 subjects, recipients and deliveries,
SQLite and PostgreSQL side by side: p50 and p99 latency per kind of query.

    .venv/bin/python bench/search.py                    # both backends (PostgreSQL from
                                                        # $DULY_TEST_DATABASE_URL)
    .venv/bin/python bench/search.py --postgres none    # SQLite only
    .venv/bin/python bench/search.py --n 20000 --repeat 20

What is measured: one call of ``search_all`` (what /search runs to list subjects,
recipients and deliveries, ranked), of ``exact_matches`` (what it runs first: a key, a
recipient id, a delivery number or Message-ID naming one thing opens it without a search)
or of ``subjects_of_recipient`` (a recipient's page), each on a fresh
connection from the pool, timed in this process; ``--repeat`` times per query after one
warm-up, over several queries of each kind. The data is written with SQLAlchemy Core into a
scratch database migrated to head (SQLite in a temporary directory; PostgreSQL
``duly_bench_search_<pid>``, dropped at the end), with the ``search`` column computed by the
same functions the store's writes use, then ANALYZEd: ``--n`` recipients with accented
names, ``--n`` invoices (customer_name, status, amount) naming them, ``--n`` deliveries.
Figures are in bench/README.md ("The header search").
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from duly.store import tables as T  # noqa: E402
from duly.store.db import make_engine, migrate  # noqa: E402
from duly.store.search import (  # noqa: E402
    exact_matches,
    recipient_search_text,
    search_all,
    subject_search_text,
    subjects_of_recipient,
)

FIRST = ["Carol", "José", "Zoë", "Ana", "Björn", "Chloé", "Frank", "Élodie", "Søren", "Li",
         "Ümit", "Marta", "Nuño", "Ines", "Paul", "Raúl", "Sara", "Tomás", "Wei", "Yusuf"]  # fmt: skip
LAST = ["Díaz", "Müller", "García", "Ødegård", "Núñez", "Smith", "Łukasz", "Brontë", "Kovač",
        "Dubois", "Rossi", "Nowak", "Silva", "Jensen", "Öztürk", "Martín", "Hernández",
        "Peña", "Weiß", "Çelik"]  # fmt: skip


def seed(db: sa.Engine, n: int) -> None:
    rnd = random.Random(11)
    now = datetime(2026, 12, 1, tzinfo=UTC)
    recips, subjects, dels = [], [], []
    for i in range(n):
        rid = f"c{i:06d}"
        # one in 20,000 is a "Díaz" with a rarer first name, the rest spread over the lists
        name = f"{rnd.choice(FIRST)} {rnd.choice(LAST)} {i}"
        email = f"{rid}@example.com"
        phone = f"+44 7700 {i:06d}"
        recips.append({
            "id": rid, "name": name, "email": email, "phone": phone, "addresses": {},
            "consent": {}, "created_at": now, "updated_at": now,
            "search": recipient_search_text(rid, name, email, phone),
        })  # fmt: skip
        key = f"INV-{i:07d}"
        attrs = {
            "customer_name": name, "status": rnd.choice(["sent", "paid", "draft"]),
            "amount": round(rnd.uniform(10, 5000), 2), "currency": "EUR",
            "due_at": (now + timedelta(days=rnd.randint(-60, 60))).isoformat(),
        }  # fmt: skip
        roles = {"customer": [rid]}
        subjects.append({
            "kind": "invoice", "key": key, "attributes": attrs, "recipients": roles,
            "revision": 1, "acknowledged": [], "created_at": now, "updated_at": now,
            "search": subject_search_text("invoice", key, attrs, roles),
        })  # fmt: skip
        dels.append({
            "rule": "invoice-reminders", "step": "due-soon", "occurrence": "0",
            "subject": f"invoice/INV-{rnd.randrange(n):07d}", "recipient": rid,
            "channel": "email", "state": "sent", "category": "reminder", "priority": 0,
            "planned_at": now, "due_at": now, "attempts": 1, "error_count": 0,
            "message_id": f"<{i:08x}.bench@duly.example>", "created_at": now, "updated_at": now,
        })  # fmt: skip
    with db.begin() as conn:
        for table, rows in ((T.recipients, recips), (T.subjects, subjects), (T.deliveries, dels)):
            for k in range(0, len(rows), 5_000):
                conn.execute(sa.insert(table), rows[k : k + 5_000])
    with db.begin() as conn:
        conn.exec_driver_sql("ANALYZE")


def queries(n: int) -> list[tuple[str, list[str]]]:
    rnd = random.Random(5)
    some = [rnd.randrange(n) for _ in range(5)]
    return [
        ("name, no accent", ["diaz", "muller", "odegard", "nunez", "weiss"]),
        ("two words", ["carol diaz", "jose garcia", "zoe bronte", "soren jensen", "ana pena"]),
        ("name + number", [f"{LAST[i % 20]} {i}" for i in some]),
        ("key, exact", [f"INV-{i:07d}" for i in some]),
        ("key, any case", [f"inv-{i:07d}" for i in some]),
        ("email", [f"c{i:06d}@example.com" for i in some]),
        ("phone", [f"7700 {i:06d}" for i in some]),
        ("delivery id", [str(i + 1) for i in some]),
        ("Message-ID", [f"{i:08x}.bench@duly.example" for i in some]),
        ("no match", ["zzqx", "qqqqqq", "nobody here", "xylophone", "kwyjibo"]),
        ("1 letter", ["a", "e", "z", "q", "o"]),
    ]


def run(db: sa.Engine, fn: Callable[[Any], Any], repeat: int) -> list[float]:
    with db.connect() as conn:
        fn(conn)  # warm
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        with db.connect() as conn:
            fn(conn)
        out.append((time.perf_counter() - t) * 1000)
    return out


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def measure(url: str, n: int, repeat: int) -> dict[str, tuple[float, float]]:
    db = make_engine(url)
    migrate(db)
    t0 = time.perf_counter()
    seed(db, n)
    print(f"  seeded {n:,} of each in {time.perf_counter() - t0:.1f} s", flush=True)
    out: dict[str, tuple[float, float]] = {}
    everything: list[float] = []
    for label, texts in queries(n):
        times: list[float] = []
        for text in texts:
            times += run(db, lambda c, t=text: search_all(c, t), repeat)
        everything += times
        out[label] = (statistics.median(times), pct(times, 99))
    out["all searches"] = (statistics.median(everything), pct(everything, 99))
    # what /search does first: a key, id or number that names one thing opens it at once
    times = []
    for label, texts in queries(n):
        if label in ("key, exact", "delivery id", "Message-ID"):
            for text in texts:
                times += run(db, lambda c, t=text: exact_matches(c, t), repeat)
    out["exact, opened at once"] = (statistics.median(times), pct(times, 99))
    times = []
    for i in random.Random(3).sample(range(n), 5):
        times += run(db, lambda c, i=i: subjects_of_recipient(c, f"c{i:06d}"), repeat)
    out["a recipient's subjects"] = (statistics.median(times), pct(times, 99))
    db.dispose()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument(
        "--postgres",
        default=os.environ.get("DULY_TEST_DATABASE_URL", ""),
        help="server URL for a scratch database, or 'none'",
    )
    args = ap.parse_args()
    results: dict[str, dict[str, tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as d:
        print("SQLite:", flush=True)
        results["SQLite"] = measure(f"sqlite:///{d}/search.db", args.n, args.repeat)
    if args.postgres and args.postgres != "none":
        server = make_url(args.postgres).set(drivername="postgresql+psycopg")
        admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
        name = f"duly_bench_search_{os.getpid()}"
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            print("PostgreSQL:", flush=True)
            url = server.set(database=name).render_as_string(hide_password=False)
            results["PostgreSQL"] = measure(url, args.n, args.repeat)
        finally:
            with admin.connect() as c:
                c.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                )
                c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
            admin.dispose()
    backends = list(results)
    print(
        f"\nduly search, {args.n:,} subjects, recipients and deliveries; p50 / p99 of "
        f"{args.repeat} × 5 queries per row; {datetime.now():%Y-%m-%d %H:%M}, load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n"
    )
    print(f"{'query':<24}" + "".join(f"{b:>22}" for b in backends))
    for label in results[backends[0]]:
        cells = "".join(
            f"{f'{results[b][label][0]:.1f} / {results[b][label][1]:.1f} ms':>22}" for b in backends
        )
        print(f"{label:<24}{cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
