"""Peak RSS of a real ``duly worker`` over a database holding many planned deliveries.

    .venv/bin/python bench/rss_worker.py --postgres postgresql+psycopg://root@127.0.0.1:5432/duly_bench_rss --future 10000000
    .venv/bin/python bench/rss_worker.py --future 1000000          # SQLite, in a temporary folder

For each of ``--future`` N and 0 future rows: a fresh database (PostgreSQL: the URL's
database, **dropped and created**, dropped at the end), migrated by ``duly migrate``; 3,000
deliveries due now planned by the engine (1,000 subjects x 3 steps, channel ``outbox``), then
N future pending rows put in with one ``INSERT … SELECT`` (``generate_series`` on PostgreSQL, a
counting CTE on SQLite; copies of a row the engine planned, each its own subject), and
``ANALYZE``. Then ``duly worker`` starts (through ``/bin/sh``, so its peak RSS is its own and not
this process's), sends the 3,000 due rows, runs idle for ``--idle`` seconds (its dispatcher
looks for due rows, sleeps until the next due time; the keeper renews leases and beats) and
is stopped with SIGTERM. Reported: the worker's ``VmHWM`` (peak RSS) and last ``VmRSS`` from
``/proc``, the time to send the due rows, and the insert time. One JSON line per size goes to
``bench/out/rss-worker-latest.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import DULY, OUT_DIR, ScratchPostgres, duly_env, log, remove_sqlite  # noqa: E402

RULES = """
timezone: UTC
channels:
  email: {type: outbox}
rules:
  - name: bench
    subject: job
    to: [owner]
    channels: [email]
    template: bench
    steps:
      - name: first
        at: "due_at"
      - name: second
        at: "due_at + 1h"
      - name: third
        at: "due_at + 2h"
"""
TEMPLATE = "Subject: {{ subject.key }}\n{{ step.name }}\n"
DUE_SUBJECTS = 1_000
RECIPIENTS = 100


def _status(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            out[name] = int(value.split()[0]) / 1024
    return out


def _plan(root: Path, url: str, future: int) -> float:
    """The due rows through the engine, the future rows by INSERT … SELECT; returns the
    insert's seconds."""
    from duly.core.clock import VirtualClock
    from duly.core.model import Recipient
    from duly.core.rules.loader import load_rules
    from duly.engine.service import Engine, SubjectInput
    from duly.store.db import make_engine
    from duly.store.tables import deliveries

    rf = load_rules(root / "duly.yaml")
    db = make_engine(url)
    now = datetime.now(UTC)
    # planned "3 h ago", due 2h30 ago: every step is due now, within the default grace
    engine = Engine(rf, db, clock=VirtualClock(now - timedelta(hours=3)))
    for r in range(RECIPIENTS):
        engine.put_recipient(Recipient(id=f"r{r}", name=f"R{r}", email=f"r{r}@example.test"))
    due = (now - timedelta(hours=2, minutes=30)).isoformat()
    engine.upsert_subjects(
        [
            SubjectInput("job", f"D{i}", {"due_at": due}, {"owner": f"r{i % RECIPIENTS}"})
            for i in range(DUE_SUBJECTS)
        ]
    )
    if future == 0:
        db.dispose()
        return 0.0
    far = (now + timedelta(days=30)).replace(microsecond=0)
    engine.upsert_subjects(
        [SubjectInput("job", "F0", {"due_at": far.isoformat()}, {"owner": "r0"})]
    )
    with db.connect() as c:
        model = (
            c.execute(sa.select(deliveries).where(deliveries.c.subject == "job/F0").limit(1))
            .mappings()
            .one()
        )
    pg = db.dialect.name == "postgresql"
    if pg:
        i: Any = sa.func.generate_series(1, future).column_valued("i")
        when: Any = sa.cast(sa.literal(far.replace(tzinfo=None)), sa.DateTime) + i * sa.text(
            "interval '1 second'"
        )
        src: Any = None
    else:
        seq = sa.select(sa.literal(1).label("i")).cte("seq", recursive=True)
        seq = seq.union_all(sa.select(seq.c.i + 1).where(seq.c.i < future))
        i, src = seq.c.i, seq
        when = sa.func.strftime("%Y-%m-%d %H:%M:%S", int(far.timestamp()) + i, "unixepoch").concat(
            ".000000"
        )
    computed = {
        "subject": sa.literal("job/G").concat(sa.cast(i, sa.String)),
        "recipient": sa.literal("r").concat(sa.cast(i % RECIPIENTS, sa.String)),
        "planned_at": when,
        "due_at": when,
    }
    cols = [c for c in deliveries.columns if c.name != "id"]
    exprs = [
        computed[c.name]
        if c.name in computed
        else (sa.null() if model[c.name] is None else sa.literal(model[c.name], c.type))
        for c in cols
    ]
    sel = sa.select(*exprs)
    if src is not None:
        sel = sel.select_from(src)
    t = time.perf_counter()
    with db.begin() as c:
        c.execute(sa.insert(deliveries).from_select([c.name for c in cols], sel))
    with db.connect() as c:
        if pg:
            c.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE deliveries")
        else:
            c.exec_driver_sql("ANALYZE")
    took = time.perf_counter() - t
    db.dispose()
    return took


def measure(root: Path, url: str, future: int, idle: float) -> dict[str, Any]:
    env = duly_env(url, root / "duly.yaml")
    subprocess.run([*DULY, "migrate"], env=env, cwd=root, check=True, capture_output=True,
                   timeout=300)  # fmt: skip
    log(f"{future:,} future rows: planning")
    insert_s = _plan(root, url, future)
    log(f"{future:,} future rows: inserted in {insert_s:.1f} s; duly worker starts")
    from duly.store.db import make_engine

    db = make_engine(url)
    logf = open(root / f"worker-{future}.log", "w")  # noqa: SIM115
    p = subprocess.Popen(
        ["/bin/sh", "-c", 'exec "$@"', "sh", *DULY, "worker"],
        env=env, cwd=root, stdout=logf, stderr=subprocess.STDOUT,
    )  # fmt: skip
    samples: list[dict[str, float]] = []
    t0 = time.monotonic()
    sent_at = None
    try:
        while time.monotonic() - t0 < 600:
            time.sleep(0.5)
            if p.poll() is not None:
                raise RuntimeError(f"duly worker exited with {p.returncode}")
            samples.append(_status(p.pid))
            if sent_at is None:
                with db.connect() as c:
                    sent = c.exec_driver_sql(
                        "SELECT count(*) FROM deliveries WHERE state = 'sent'"
                    ).scalar()
                if sent >= DUE_SUBJECTS * 3:
                    sent_at = time.monotonic() - t0
            elif time.monotonic() - t0 > sent_at + idle:
                break
        last = _status(p.pid)
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(60)
        logf.close()
        db.dispose()
    if sent_at is None:
        raise RuntimeError("the worker did not send the due rows within 600 s")
    res = {
        "future": future,
        "due": DUE_SUBJECTS * 3,
        "insert_s": round(insert_s, 1),
        "sent_due_in_s": round(sent_at, 1),
        "peak_rss_mb": round(last["VmHWM"], 1),
        "rss_end_mb": round(last["VmRSS"], 1),
        "rss_max_sampled_mb": round(max(s["VmRSS"] for s in samples), 1),
    }
    log(f"{future:,} future rows: {res}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--postgres", default=None, help="a scratch database URL (dropped, made)")
    ap.add_argument("--future", type=int, default=1_000_000)
    ap.add_argument("--idle", type=float, default=10.0, help="seconds idle after the due rows")
    a = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="duly-rss-") as tmp:
        root = Path(tmp)
        (root / "templates").mkdir()
        (root / "templates" / "bench.email.txt").write_text(TEMPLATE)
        (root / "duly.yaml").write_text(RULES)
        for n in (a.future, 0):
            if a.postgres:
                scratch = ScratchPostgres(a.postgres, default="duly_bench_rss")
                url = scratch.create()
                try:
                    results.append(measure(root, url, n, a.idle))
                finally:
                    scratch.close()
            else:
                path = root / f"rss-{n}.db"
                try:
                    results.append(measure(root, f"sqlite:///{path}", n, a.idle))
                finally:
                    remove_sqlite(path)
    backend = "PostgreSQL" if a.postgres else "SQLite"
    OUT_DIR.mkdir(exist_ok=True)
    out = {"backend": backend, "at": datetime.now(UTC).isoformat(), "runs": results}
    (OUT_DIR / "rss-worker-latest.json").write_text(json.dumps(out, indent=1))
    for r in results:
        print(  # noqa: T201
            f"{backend}: duly worker over {r['future']:,} future + {r['due']:,} due rows: "
            f"peak RSS {r['peak_rss_mb']} MB (at the end {r['rss_end_mb']} MB); due rows sent "
            f"in {r['sent_due_in_s']} s; insert {r['insert_s']} s"
        )


if __name__ == "__main__":
    if os.environ.get("DULY_DATABASE_URL"):
        os.environ.pop("DULY_DATABASE_URL")
    main()
