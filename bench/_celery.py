"""The Celery + Redis comparison for ``bench/dispatch.py``.

Runs with a *separate* virtualenv that has ``celery[redis]`` (never duly's own), e.g.::

    python3 -m venv /tmp/celery-venv && /tmp/celery-venv/bin/pip install "celery[redis]"
    /tmp/celery-venv/bin/python bench/_celery.py --drain 5000 --rate 83 --window 60

It is both the Celery app (the worker imports it as ``_celery``) and the driver (run as a
script): it starts one worker subprocess (prefork, ``-c 2``: Celery's default pool at this
machine's core count), measures, stops the worker and prints one JSON object on stdout.

- drain: ``--drain`` trivial tasks are queued *before* the worker starts; the rate is the
  number of tasks over the time from the first task's start to the last one's.
- lateness: ``rate x window`` tasks with ``eta`` spread evenly over the window, all queued a
  few seconds ahead; each task records ``time.time() - eta`` at its start.

Everything lives in one Redis database (default 15) under this run's own queue name
(``DULY_BENCH_CELERY_QUEUE``; bench/dispatch.py passes one per run): only that queue's keys are
deleted afterwards, so concurrent runs and other users of the database are left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import redis
from celery import Celery

BROKER = os.environ.get("DULY_BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/15")
QUEUE = os.environ.get("DULY_BENCH_CELERY_QUEUE", "duly-bench")
SEEN = f"{QUEUE}:seen"  # a list of "started_at eta" pairs, one per task run

app = Celery("duly_bench", broker=BROKER)
app.conf.update(
    task_ignore_result=True,
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
)

_redis: redis.Redis | None = None


@app.task(name="duly_bench.tick")
def tick(eta: float) -> None:
    """The trivial task: note when it started and when it was meant to."""
    global _redis
    started = time.time()
    if _redis is None:
        _redis = redis.Redis.from_url(BROKER)
    _redis.rpush(SEEN, f"{started!r} {eta!r}")


# --------------------------------------------------------------------------- driver


def _start_worker(pool: str, concurrency: int) -> subprocess.Popen[bytes]:
    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": str(here)}
    cmd = [
        sys.executable, "-m", "celery", "-A", "_celery", "worker",
        "--pool", pool, "-c", str(concurrency), "-Q", QUEUE, "--loglevel", "WARNING",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    return subprocess.Popen(
        cmd, cwd=here, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is not None:
        return
    # The worker's own process group: the prefork children go with it, nothing else does.
    os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(5)


def _wait_for(r: redis.Redis, n: int, deadline: float, worker: subprocess.Popen[bytes]) -> int:
    while time.time() < deadline:
        got = r.llen(SEEN)
        if got >= n:
            return got
        if worker.poll() is not None:
            err = worker.stderr.read().decode(errors="replace") if worker.stderr else ""
            raise RuntimeError(f"celery worker exited with {worker.returncode}: {err[-2000:]}")
        time.sleep(0.05)
    return r.llen(SEEN)


def _seen(r: redis.Redis) -> list[tuple[float, float]]:
    out = []
    for item in r.lrange(SEEN, 0, -1):
        started, eta = item.decode().split()
        out.append((float(started), float(eta)))
    return out


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--drain", type=int, default=5000, help="tasks for the drain rate")
    ap.add_argument("--rate", type=float, default=83.0, help="tasks per second (lateness)")
    ap.add_argument("--window", type=float, default=60.0, help="seconds (lateness)")
    ap.add_argument("--pool", default="prefork")
    ap.add_argument("--concurrency", type=int, default=2)
    args = ap.parse_args()

    r = redis.Redis.from_url(BROKER)
    r.delete(SEEN, QUEUE)
    worker = None
    out: dict[str, object] = {
        "broker": BROKER, "pool": args.pool, "concurrency": args.concurrency,
        "celery": __import__("celery").__version__,
    }  # fmt: skip
    try:
        # -- drain: everything queued before the worker starts
        with app.producer_or_acquire() as producer:
            for _ in range(args.drain):
                tick.apply_async((0.0,), producer=producer)
        worker = _start_worker(args.pool, args.concurrency)
        got = _wait_for(r, args.drain, time.time() + 120 + args.drain / 200, worker)
        starts = sorted(s for s, _ in _seen(r))
        out["drain_n"] = got
        out["drain_s"] = starts[-1] - starts[0]
        out["drain_per_s"] = (len(starts) - 1) / (starts[-1] - starts[0])
        r.delete(SEEN)

        # -- lateness: eta spread evenly over the window, all queued a few seconds ahead
        n = int(args.rate * args.window)
        start = time.time() + 3.0 + n / 2000
        with app.producer_or_acquire() as producer:
            for i in range(n):
                eta = start + i / args.rate
                tick.apply_async((eta,), eta=datetime.fromtimestamp(eta, UTC), producer=producer)
        out["queued_ahead_s"] = start - time.time()
        got = _wait_for(r, n, start + args.window + 30, worker)
        late_ms = [(s - e) * 1000 for s, e in _seen(r)]
        out["lateness"] = {
            "rate": args.rate,
            "window_s": args.window,
            "planned": n,
            "ran": got,
            "p50_ms": _pct(late_ms, 50),
            "p99_ms": _pct(late_ms, 99),
            "max_ms": max(late_ms),
            "min_ms": min(late_ms),
        }
    finally:
        if worker is not None:
            _stop_worker(worker)
        # Every key named after this run's queue (the queue, kombu's binding of it, SEEN);
        # kombu's shared keys ("unacked", "_kombu.binding_deadlines") are left to it.
        ours = [k for k in r.scan_iter(match=f"*{QUEUE}*") if QUEUE in k.decode()]
        if ours:
            r.delete(*ours)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
