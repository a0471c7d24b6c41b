"""The peers of ``bench/peers.py``: one driver per system, each run by that system's own
virtualenv (``bench/.venvs/NAME``, never duly's), printing one JSON object on stdout::

    bench/.venvs/celery/bin/python bench/_peer_drivers.py celery --n 2000 --drain 2000 --window 10

It is also the module the peers' workers import (``PEER_SYSTEM`` says which app to build):
the task of every system is :func:`record`, which appends ``"<time.time()> <id>"`` to the
file ``PEER_RECORD`` when it runs — the same record for all peers.

The workload is the one ``bench/peers.py`` gives duly: (1) ``--n`` reminders due a day ahead
(spread over an hour), scheduled one call each from one loop: calls/s; (2) ``--drain``
reminders all due at one instant T0 (far enough ahead for the loop to finish first):
executed / (last execution - T0); (3) 83/s for ``--window`` seconds, scheduled ahead:
execution time - due time, p50/p99. Throughout, :class:`_peerkit.Sampler` notes the peak RSS
of the system's processes and the CPU of them and of the database server's processes.

- celery: Celery + Redis (database 15, a queue of this run's own, deleted after),
  ``apply_async(eta=...)``, a ``prefork -c 2`` worker.
- huey: ``SqliteHuey`` (busy timeout 30 s: at the default 5 s a ``schedule()`` call failed
  with "database is locked" on the loaded machine), ``schedule(eta=...)``, ``huey_consumer
  -k process -w 2`` (other consumer options at their defaults: the scheduler looks for due
  tasks every second, and idle workers poll less and less often, up to every 10 s).
- procrastinate: PostgreSQL (a scratch database ``bench/peers.py`` makes and drops),
  ``configure(schedule_at=...).defer()``, ``procrastinate worker -c 2`` (defaults
  otherwise: a scheduled job is fetched by polling, every 5 s).
- apscheduler: APScheduler 3, ``BackgroundScheduler`` with an ``SQLAlchemyJobStore`` on
  SQLite, ``add_job(trigger='date', run_date=...)``; ``misfire_grace_time=None`` (the
  default, 1 s, would drop most of the drain as misfired). The scheduler lives in the
  driver's process: its RSS and CPU are the system's, the client loop's included.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _peerkit import FAR_S, RATE, WINDOW_FAR_S, Sampler, pct, server_pids  # noqa: E402

SYSTEM = os.environ.get("PEER_SYSTEM", "")
RECORD = os.environ.get("PEER_RECORD", "/dev/null")


def record(rid: str) -> None:
    """The task: note when it ran."""
    line = f"{time.time()!r} {rid}\n".encode()
    fd = os.open(RECORD, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


# --------------------------------------------------------------------------- the apps

if SYSTEM == "celery":
    from celery import Celery

    QUEUE = os.environ.get("PEER_QUEUE", "duly-peers")
    celery_app = Celery(
        "duly_peers", broker=os.environ.get("PEER_BROKER", "redis://127.0.0.1:6379/15")
    )
    celery_app.conf.update(
        task_ignore_result=True, task_default_queue=QUEUE,
        broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )  # fmt: skip
    celery_record = celery_app.task(name="duly_peers.record")(record)

if SYSTEM == "huey":
    from huey import SqliteHuey

    # timeout: SQLite's busy timeout, 5 s by default; on the loaded 2-core machine a
    # schedule() call then failed with "database is locked" while the consumer held the lock
    huey_app = SqliteHuey(
        "duly-peers", filename=os.environ.get("PEER_DB", "peers-huey.db"), timeout=30
    )
    huey_record = huey_app.task()(record)

if SYSTEM == "procrastinate":
    import procrastinate

    proc_app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=os.environ.get("PEER_PG", ""))
    )
    proc_record = proc_app.task(name="record")(record)


# --------------------------------------------------------------------------- adapters


class Peer:
    name = ""
    in_process = False  # the system runs in the driver's process (APScheduler)

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[subprocess.Popen[bytes]] = []

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(HERE), "PEER_SYSTEM": self.name}

    def spawn(self, cmd: list[str]) -> None:
        log = open(self.work / f"{self.name}-worker.log", "ab")  # noqa: SIM115
        self.procs.append(subprocess.Popen(
            cmd, cwd=HERE, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        ))  # fmt: skip

    def roots(self) -> list[int]:
        return [os.getpid()] if self.in_process else [p.pid for p in self.procs]

    def servers(self) -> list[int]:
        return []

    def start(self) -> None: ...

    def schedule(self, rid: str, at: float) -> None:
        raise NotImplementedError

    def check(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                tail = (self.work / f"{self.name}-worker.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.name} worker exited with {p.returncode}: {tail}")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(5)


class CeleryPeer(Peer):
    name = "celery"

    def start(self) -> None:
        import redis

        self.redis = redis.Redis.from_url(celery_app.conf.broker_url)
        self.spawn([
            sys.executable, "-m", "celery", "-A", "_peer_drivers:celery_app", "worker",
            "--pool", "prefork", "-c", "2", "-Q", QUEUE, "--loglevel", "WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ])  # fmt: skip

    def servers(self) -> list[int]:
        return server_pids(redis=True)

    def schedule(self, rid: str, at: float) -> None:
        celery_record.apply_async((rid,), eta=_dt(at))

    def stop(self) -> None:
        super().stop()
        ours = [k for k in self.redis.scan_iter(match=f"*{QUEUE}*") if QUEUE in k.decode()]
        if ours:
            self.redis.delete(*ours)


class HueyPeer(Peer):
    name = "huey"

    def start(self) -> None:
        consumer = str(Path(sys.executable).with_name("huey_consumer"))
        self.spawn([consumer, "_peer_drivers.huey_app", "-k", "process", "-w", "2", "-q"])

    def schedule(self, rid: str, at: float) -> None:
        huey_record.schedule(args=(rid,), eta=_dt(at))


class ProcrastinatePeer(Peer):
    name = "procrastinate"

    def start(self) -> None:
        cli = [
            sys.executable,
            "-m",
            "procrastinate",
            "--log-level=warning",
            "--app=_peer_drivers.proc_app",
        ]
        subprocess.run([*cli, "schema", "--apply"], cwd=HERE, env=self.env(), check=True,
                       capture_output=True, timeout=120)  # fmt: skip
        self.db = os.environ["PEER_PG_NAME"]
        proc_app.open()
        self.spawn([*cli, "worker", "-c", "2"])

    def servers(self) -> list[int]:
        return server_pids(pg_database=self.db)

    def schedule(self, rid: str, at: float) -> None:
        proc_record.configure(schedule_at=_dt(at)).defer(rid=rid)

    def stop(self) -> None:
        super().stop()
        proc_app.close()


class ApschedulerPeer(Peer):
    name = "apscheduler"
    in_process = True

    def start(self) -> None:
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
        from apscheduler.schedulers.background import BackgroundScheduler

        url = f"sqlite:///{os.environ.get('PEER_DB', 'peers-aps.db')}"
        self.sched = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(url=url)},
            job_defaults={"misfire_grace_time": None, "coalesce": False},
            timezone="UTC",
        )
        self.sched.start()

    def schedule(self, rid: str, at: float) -> None:
        self.sched.add_job("_peer_drivers:record", trigger="date", run_date=_dt(at),
                           args=[rid], id=rid)  # fmt: skip

    def stop(self) -> None:
        self.sched.shutdown(wait=False)


PEERS: dict[str, type[Peer]] = {
    p.name: p for p in (CeleryPeer, HueyPeer, ProcrastinatePeer, ApschedulerPeer)
}


# --------------------------------------------------------------------------- the workload


def _records(prefix: str) -> list[tuple[float, str]]:
    out = []
    try:
        text = Path(RECORD).read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        t, _, rid = line.partition(" ")
        if rid.startswith(prefix):
            try:
                out.append((float(t), rid))
            except ValueError:
                pass
    return out


def _wait(peer: Peer, prefix: str, n: int, deadline: float) -> list[tuple[float, str]]:
    while True:
        got = _records(prefix)
        if len(got) >= n or time.time() > deadline:
            return got
        peer.check()
        time.sleep(0.2)


def run(peer: Peer, a: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"system": peer.name}
    peer.start()
    sampler = Sampler(peer.roots, peer.servers).start()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    try:
        time.sleep(2.0)  # the worker is up
        peer.check()
        # (1) schedule: far-future reminders, one call each
        base = time.time() + FAR_S
        t = time.perf_counter()
        for i in range(a.n):
            peer.schedule(f"s{i}", base + WINDOW_FAR_S * i / a.n)
        secs = time.perf_counter() - t
        rate = a.n / secs
        out["schedule"] = {"n": a.n, "seconds": secs, "per_s": rate}
        print(f"[{peer.name}] schedule {rate:,.0f}/s", file=sys.stderr, flush=True)

        # (2) drain: all due at one instant T0, scheduled before it
        t0 = time.time() + 3 + 1.5 * a.drain / rate
        for i in range(a.drain):
            peer.schedule(f"d{i}", t0)
        done = time.time()
        got = _wait(peer, "d", a.drain, t0 + max(120.0, a.drain / 20))
        last = max((t for t, _ in got), default=float("nan"))
        out["drain"] = {
            "n": a.drain, "executed": len(got), "seconds": last - t0,
            "per_s": len(got) / (last - t0) if got and last > t0 else float("nan"),
            "scheduled_before_due_s": t0 - done,
            "first_after_due_s": min((t for t, _ in got), default=float("nan")) - t0,
        }  # fmt: skip
        print(f"[{peer.name}] drain {out['drain']['per_s']:,.0f}/s", file=sys.stderr, flush=True)

        # (3) lateness at RATE/s over the window, all scheduled ahead
        n = int(RATE * a.window)
        t0 = time.time() + 3 + 1.5 * n / rate
        due = {f"l{i}": t0 + i / RATE for i in range(n)}
        for rid, at in due.items():
            peer.schedule(rid, at)
        got = _wait(peer, "l", n, t0 + a.window + 30)
        late = [(t - due[rid]) * 1000 for t, rid in got if rid in due]
        out["lateness"] = {
            "rate": RATE, "window_s": a.window, "planned": n, "ran": len(got),
            "p50_ms": pct(late, 50), "p99_ms": pct(late, 99), "max_ms": max(late, default=float("nan")),
        }  # fmt: skip
        print(f"[{peer.name}] lateness p50 {out['lateness']['p50_ms']:.1f} ms, "
              f"p99 {out['lateness']['p99_ms']:.1f} ms", file=sys.stderr, flush=True)  # fmt: skip
    finally:
        stats = sampler.stop()
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        peer.stop()
    client = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    if peer.in_process:  # the client is the system's own process: counted there already
        client = 0.0
    reminders = a.n + a.drain + int(RATE * a.window)
    out["resources"] = {**stats, "cpu_client_s": client, "reminders": reminders}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("system", choices=sorted(PEERS))
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--drain", type=int, default=2000)
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--work", default=".")
    a = ap.parse_args()
    # SIGTERM (bench/peers.py giving up) unwinds through run()'s finally: workers stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if a.system != SYSTEM:
        raise SystemExit("PEER_SYSTEM must name the system (the workers import this module)")
    out = run(PEERS[a.system](Path(a.work)), a)
    out["version"] = _version(a.system)
    print(json.dumps(out))
    return 0


def _version(system: str) -> str:
    from importlib.metadata import version

    return version({"apscheduler": "APScheduler"}.get(system, system))


if __name__ == "__main__":
    # Run as the module the workers import, so that tasks are named ``_peer_drivers.*``.
    import importlib

    sys.exit(importlib.import_module("_peer_drivers").main())
