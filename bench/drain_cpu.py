"""CPU cost of the drain, per 1,000 deliveries: less disturbed by a busy machine than rates.

    .venv/bin/python bench/drain_cpu.py                       # SQLite, outbox, 6,000
    .venv/bin/python bench/drain_cpu.py --channel smtp        # to an aiosmtpd sink
    .venv/bin/python bench/drain_cpu.py --postgres URL        # PostgreSQL (scratch database)
    .venv/bin/python bench/drain_cpu.py --profile out.prof    # cProfile the drain

Plans N subjects x 3 steps (the shape of bench/dispatch.py), makes them all due, and drains
them with ``Dispatcher.run_once`` in this process, renderer on (its render processes are
counted: CPU is this process plus its children, read from /proc). Prints wall seconds, the
rate, CPU seconds per 1,000 deliveries and the load average while it ran.
"""

from __future__ import annotations

import argparse
import cProfile
import multiprocessing as mp
import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _smtp_sink import add_options, drain_sink  # noqa: E402
from dispatch import (  # noqa: E402
    STEPS,
    T0,
    T_DUE,
    PostgresBackend,
    Setup,
    SqliteBackend,
    add_recipients,
    close_dispatcher,
    job,
    make_setup,
    plan,
    states,
)

from duly.core.clock import VirtualClock  # noqa: E402
from duly.delivery.channels.outbox import OutboxChannel  # noqa: E402
from duly.delivery.channels.smtp import SmtpChannel  # noqa: E402
from duly.delivery.rendering import Renderer  # noqa: E402
from duly.engine.dispatch import Dispatcher  # noqa: E402
from duly.engine.service import Engine  # noqa: E402
from duly.store.db import make_engine  # noqa: E402

_HZ = os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int | None = None) -> tuple[float, float]:
    """CPU seconds (user + system) of this process, and of its live children."""
    pid = pid or os.getpid()
    own = kids = 0.0
    for p in [pid, *_children(pid)]:
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        t = (int(f[11]) + int(f[12])) / _HZ
        if p == pid:
            own += t
        else:
            kids += t
    return own, kids


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids = (t / "children").read_text().split()
        except OSError:
            continue
        for k in kids:
            out += [int(k), *_children(int(k))]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="subjects (deliveries = 3n)")
    ap.add_argument("--channel", choices=["outbox", "smtp"], default="outbox")
    ap.add_argument("--postgres", help="a PostgreSQL URL (a scratch database is made)")
    ap.add_argument("--profile", help="write a cProfile of the drain here")
    ap.add_argument("--batch-size", type=int, default=200)
    ap.add_argument(
        "--workers", type=int, default=0, help="drain in this many worker processes instead"
    )
    add_options(ap)  # --sink, --pipelining
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="duly-drain-") as tmp:
        root = Path(tmp)
        setup = make_setup(root)
        backend = PostgresBackend(a.postgres) if a.postgres else SqliteBackend(root)
        try:
            url = backend.fresh()
            db = make_engine(url)
            clock = VirtualClock(T0)
            engine = Engine(setup.rules, db, clock=clock)
            add_recipients(engine)
            plan(engine, lambda i: job(i, T_DUE + timedelta(seconds=i % 3600)), a.n)
            clock.set(T_DUE + timedelta(hours=3, minutes=1))
            if a.workers:
                db.dispose()
                return _drain_in_workers(a, backend, url, setup, db)
            renderer = Renderer(setup.templates)
            with drain_sink(a) if a.channel == "smtp" else _nothing() as sink:
                if a.channel == "smtp":
                    chan = SmtpChannel(
                        "email", url=f"smtp://127.0.0.1:{sink[0]}", from_="bench@duly.test"
                    )
                else:
                    chan = OutboxChannel("email")
                disp = Dispatcher(engine, {"email": chan}, renderer, batch_size=a.batch_size)
                prof = cProfile.Profile() if a.profile else None
                load0 = os.getloadavg()[0]
                c0, t0 = tree_cpu(), time.perf_counter()
                if prof:
                    prof.enable()
                done = 0
                while n := disp.run_once():
                    done += n
                if prof:
                    prof.disable()
                c1 = tree_cpu()
                secs = time.perf_counter() - t0
                own, kids = c1[0] - c0[0], c1[1] - c0[1]
                cpu = own + kids
                load1 = os.getloadavg()[0]
                close_dispatcher(disp)
                chan.close()
                got = sink[1]() if a.channel == "smtp" else None
            renderer.close()
            after = states(db)
            db.dispose()
        finally:
            backend.close()
    if after.get("sent") != STEPS * a.n or (got is not None and got != STEPS * a.n):
        print(f"WRONG: states {after}, sink {got}, expected {STEPS * a.n}", file=sys.stderr)
        return 1
    print(
        f"{backend.name} {a.channel}: {done:,} deliveries in {secs:.2f} s = {done / secs:,.0f}/s;"
        f" CPU {cpu:.2f} s = {1000 * cpu / done:.3f} s per 1,000"
        f" (dispatcher {1000 * own / done:.3f}, render processes and sink {1000 * kids / done:.3f});"
        f" load average {load0:.1f} -> {load1:.1f}"
    )
    if prof:
        prof.dump_stats(a.profile)
    return 0


def _worker(url: str, setup: Setup, batch_size: int, go: Any, out: Any) -> None:
    db = make_engine(url)
    engine = Engine(setup.rules, db, clock=VirtualClock(T_DUE + timedelta(hours=3, minutes=1)))
    renderer = Renderer(setup.templates)
    disp = Dispatcher(engine, {"email": OutboxChannel("email")}, renderer, batch_size=batch_size)
    renderer.render_many([])  # start the render processes before the clock starts
    go.wait()
    c0 = tree_cpu()
    done = 0
    while n := disp.run_once():
        done += n
    c1 = tree_cpu()
    out.put((done, c1[0] + c1[1] - c0[0] - c0[1]))
    close_dispatcher(disp)
    renderer.close()
    db.dispose()


def _drain_in_workers(a: Any, backend: Any, url: str, setup: Setup, db: Any) -> int:
    """The drain in ``a.workers`` processes (each a Dispatcher with its render processes)."""
    ctx = mp.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(url, setup, a.batch_size, go, out))
        for _ in range(a.workers)
    ]
    for p in procs:
        p.start()
    time.sleep(3)  # imports and render processes started
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    go.set()
    got = [out.get(timeout=600) for _ in procs]
    secs = time.perf_counter() - t0
    load1 = os.getloadavg()[0]
    done = sum(d for d, _ in got)
    cpu = sum(c for _, c in got)
    for p in procs:
        p.join(30)
    after = states(make_engine(url))
    ok = after.get("sent") == STEPS * a.n
    print(
        f"{backend.name} outbox, {a.workers} worker process(es): {done:,} deliveries in"
        f" {secs:.2f} s = {done / secs:,.0f}/s; CPU (workers, not the database) {cpu:.2f} s ="
        f" {1000 * cpu / done:.3f} s per 1,000; load average {load0:.1f} -> {load1:.1f}"
        + ("" if ok else f"; WRONG: {after}")
    )
    return 0 if ok else 1


class _nothing:
    def __enter__(self):  # noqa: ANN204
        return None

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    sys.exit(main())
