"""The fault suite: real duly processes put through crashes, database restarts, a failing
relay and a full disk, with an SMTP sink counting what really arrived.

    .venv/bin/python bench/faults.py                    # the full suite (~40 min)
    .venv/bin/python bench/faults.py --short            # the CI version (~4 min)
    .venv/bin/python bench/faults.py --only kill-backlog,pg-restart

Processes: ``duly serve`` plus ``duly worker``s on a PostgreSQL cluster of the suite's own
(``dulyfaults`` on port 5544, made with ``pg_createcluster`` when missing and dropped at the
end when made here; never the server on 5432 other tests use), or one ``duly serve`` on
SQLite. The sink is aiosmtpd in a child process, switchable between normal, slow (N s per
message), answering 451 to everything, and refusing connections. Subjects are loaded through
``POST /v1/subjects:batch``; each plans one email, due all at once (a backlog) or spread over
a window (light load).

Per scenario it prints: planned / sent (unique Message-IDs at the sink) / lost (planned,
never arrived, not recorded failed or skipped: must be 0) / duplicates (arrivals beyond the
first per Message-ID) against the sends in flight at each crash (measured: rows the crashed
process held as ``sending`` whose message had already reached the sink; bound: its send
concurrency) / deliveries more than a minute late and why / how long until every process
sent again after each fault. See bench/README.md for the scenarios and the figures.

It exits 1 when a scenario lost a delivery (or could not run), 0 otherwise.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# --------------------------------------------------------------------------- the sink (child)


def sink_child(port: int, log_path: str) -> None:
    """The SMTP sink, run as ``faults.py --sink-child PORT LOG`` (its own GIL). Each accepted
    message is one line ``<unix time> <client port> <Message-ID>`` in LOG. Commands on
    stdin, one a line, each answered ``ok``: ``normal``, ``slow SECONDS``, ``451``,
    ``refuse`` (stop listening and drop open connections), ``quit``."""
    import asyncio

    from aiosmtpd.smtp import SMTP

    mid_re = re.compile(rb"^message-id:\s*<?([^>\s]+)>?", re.I | re.M)
    out = open(log_path, "a", buffering=1)  # noqa: SIM115 - open for the child's life
    state: dict[str, Any] = {"mode": "normal", "slow": 0.0}
    protos: set[Any] = set()

    class Handler:
        async def handle_MAIL(self, server, session, envelope, address, options):  # noqa: ANN001
            if state["mode"] == "451":
                return "451 4.3.0 sink: try again later"
            envelope.mail_from = address
            envelope.mail_options.extend(options)
            return "250 OK"

        async def handle_DATA(self, server, session, envelope):  # noqa: ANN001
            if state["mode"] == "451":
                return "451 4.3.0 sink: try again later"
            if state["slow"]:
                await asyncio.sleep(state["slow"])
            head = envelope.content.split(b"\r\n\r\n", 1)[0]
            m = mid_re.search(head)
            mid = m.group(1).decode().split("@", 1)[0] if m else "-"
            out.write(f"{time.time():.4f} {session.peer[1]} {mid}\n")
            return "250 OK queued"

    class Proto(SMTP):
        def connection_made(self, transport):  # noqa: ANN001
            protos.add(self)
            super().connection_made(transport)

        def connection_lost(self, exc):  # noqa: ANN001
            protos.discard(self)
            super().connection_lost(exc)

    handler = Handler()

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def listen() -> Any:
            return await loop.create_server(
                lambda: Proto(handler, hostname="sink", enable_SMTPUTF8=True),
                "127.0.0.1", port, reuse_address=True,
            )  # fmt: skip

        server = await listen()
        queue: asyncio.Queue[str] = asyncio.Queue()

        def read_stdin() -> None:
            for line in sys.stdin:
                loop.call_soon_threadsafe(queue.put_nowait, line.strip())
            loop.call_soon_threadsafe(queue.put_nowait, "quit")

        threading.Thread(target=read_stdin, daemon=True).start()
        print("ready", flush=True)
        while True:
            cmd = (await queue.get()).split()
            if not cmd:
                continue
            if cmd[0] == "quit":
                break
            if cmd[0] == "refuse":
                if server is not None:
                    server.close()
                    server = None
                for p in list(protos):
                    if p.transport is not None:
                        p.transport.abort()
            else:
                if server is None:
                    server = await listen()
                state["mode"] = "451" if cmd[0] == "451" else "normal"
                state["slow"] = float(cmd[1]) if cmd[0] == "slow" else 0.0
            print("ok", flush=True)

    asyncio.run(main())


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--sink-child":
    sink_child(int(sys.argv[2]), sys.argv[3])
    raise SystemExit(0)


import sqlalchemy as sa  # noqa: E402
from _harness import (  # noqa: E402
    OUT_DIR,
    Api,
    DulyProc,
    PgCluster,
    duly_env,
    free_port,
    log,
    migrate_and_key,
    reap,
    spawn,
    tcp_ports_to,
)

CONCURRENCY = 8  # sends in flight per process (`duly worker --concurrency`, serve's default)
RECIPIENTS = 100
TERMINAL = ("sent", "failed", "skipped", "cancelled", "set")
NOT_LOST = ("failed", "skipped", "cancelled")  # recorded as not sent: not a loss
LATE_S = 60.0


class Sink:
    """The sink child, its control pipe and its arrival log."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.path = root / "arrivals.log"
        self.path.touch()
        self.proc = spawn(
            [sys.executable, __file__, "--sink-child", str(self.port), str(self.path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the SMTP sink did not start")
        self._lock = threading.Lock()
        self._pos = 0
        self._buf = ""
        self.arrivals: list[tuple[float, int, str]] = []  # (time, client port, Message-ID)
        self.count: Counter[str] = Counter()

    def mode(self, *cmd: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self._lock:
            self.proc.stdin.write(" ".join(cmd) + "\n")
            self.proc.stdin.flush()
            if self.proc.stdout.readline().strip() != "ok":
                raise RuntimeError(f"the sink did not take {cmd}")
        log(f"  sink: {' '.join(cmd)}")

    def poll(self) -> int:
        """Read new arrivals; returns how many arrivals so far."""
        with self._lock, open(self.path) as f:
            f.seek(self._pos)
            data = self._buf + f.read()
            self._pos = f.tell()
            complete, _, self._buf = data.rpartition("\n")
            for line in complete.splitlines():
                t, port, mid = line.split(" ", 2)
                self.arrivals.append((float(t), int(port), mid))
                self.count[mid] += 1
            return len(self.arrivals)

    def close(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired, AssertionError):
            pass
        reap(self.proc, 5)


# The processes' DULY_SECRET_KEY: Message-IDs are keyed with the installation's secret, so
# the suite gives one and computes every delivery's id itself (also for rows never sent).
SECRET = "duly-faults-" + uuid.uuid4().hex


@functools.cache
def _id_function() -> Callable[[Any], str]:
    try:  # keyed ids (duly.delivery.ids)
        from duly.delivery.ids import installation_key, message_id_for

        key = installation_key(SECRET)
        return lambda ident: message_id_for(ident, key)
    except ImportError:  # unkeyed ids (older duly)
        from duly.engine.dispatch import message_id_for as unkeyed

        return unkeyed


def message_id(rule: str, step: str, occurrence: str, subject: str, recipient: str,
               channel: str) -> str:  # fmt: skip
    """The Message-ID duly gives a delivery (without the ``@domain`` email adds)."""
    from duly.core.planner import Identity

    return _id_function()(Identity.from_db(rule, step, occurrence, subject, recipient, channel))


RULES = """\
timezone: UTC
allow_private_targets: true
channels:
  email: {{type: smtp, url: "smtp://127.0.0.1:{port}", from: "duly faults <faults@duly.test>"}}
rules:
  - name: faults
    subject: job
    to: [owner]
    channels: [email]
    template: faults
{retry}    steps:
      - name: due
        at: "due_at"
"""
TEMPLATE = "Job {{ subject.key }} is due ({{ step.name }}).\n"


# --------------------------------------------------------------------------- scenarios


@dataclass
class Fault:
    """One fault: when it struck, when it was over, which processes must send again."""

    kind: str
    at: float  # unix time it struck
    over: float = 0.0  # unix time it was over (process restarted, server back, relay back)
    pids: list[int] = field(default_factory=list)  # processes alive once over
    bound: int = 0  # sends that may be in flight when it strikes (duplicates allowed)
    exposed: int | None = None  # measured: held as sending, already at the sink
    orphaned: int | None = None  # rows the fault left as sending
    orphan_ids: set[int] = field(default_factory=set)
    note: str = ""


@dataclass
class Scenario:
    name: str
    backend: str  # pg | sqlite
    title: str
    n: int
    spread: float  # seconds the due times are spread over; 0: all due at once
    workers: int = 0  # `duly worker`s beside `duly serve` (PostgreSQL)
    inject: Callable[[Run], None] | None = None
    timeout: float = 600.0  # after the last due time and the last fault
    env: dict[str, str] = field(default_factory=dict)
    retry: str = ""  # a `retry:` line for the rule
    tmpfs_mb: int = 0  # SQLite on a tmpfs of this size (disk full)
    params: dict[str, Any] = field(default_factory=dict)


class Run:
    """One scenario's processes, sink and measurements while it runs."""

    def __init__(self, sc: Scenario, root: Path, cluster: PgCluster | None) -> None:
        self.sc, self.root, self.cluster = sc, root, cluster
        self.faults: list[Fault] = []
        self.sink = Sink(root)
        self.serve: DulyProc | None = None
        self.workers: list[DulyProc] = []
        self.port_pids: dict[int, list[tuple[float, int]]] = {}
        self.pid_names: dict[int, str] = {}
        self.db: sa.Engine | None = None
        self.url = ""
        self.t_first_due = self.t_last_due = 0.0
        self.stop = threading.Event()
        self.rng = random.Random(f"{sc.name}:{sc.n}")
        self.mount: Path | None = None
        self.notes: list[str] = []
        self.due_of: dict[str, float] = {}  # subject -> the due time it was loaded with
        self.accounted: dict[str, int] = {}  # Message-ID -> arrivals a fault's exposure counted

    # ------------------------------------------------------------------ set-up

    @property
    def procs(self) -> list[DulyProc]:
        return [p for p in [self.serve, *self.workers] if p is not None]

    def live_pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.alive() and p.pid is not None]

    def started(self, p: DulyProc) -> int:
        pid = p.start()
        self.pid_names[pid] = f"{p.name}#{p.starts}"
        return pid

    def setup(self) -> None:
        sc = self.sc
        if sc.backend == "pg":
            assert self.cluster is not None
            self.dbname = "faults_" + sc.name.replace("-", "_")
            self.url = self.cluster.fresh_database(self.dbname)
        else:
            where = self.root
            if sc.tmpfs_mb:
                self.mount = self.root / "fs"
                self.mount.mkdir()
                subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={sc.tmpfs_mb}m", "tmpfs",
                                str(self.mount)], check=True)  # fmt: skip
                where = self.mount
            self.url = f"sqlite:///{where / 'duly.db'}"
        tdir = self.root / "templates"
        tdir.mkdir()
        (tdir / "faults.email.txt").write_text(TEMPLATE)
        rules = self.root / "duly.yaml"
        rules.write_text(RULES.format(port=self.sink.port, retry=sc.retry))
        env = duly_env(self.url, rules, DULY_SECRET_KEY=SECRET, **sc.env)
        key = migrate_and_key(env, self.root)
        self.serve = DulyProc("serve", "serve", env, self.root, port=free_port())
        self.started(self.serve)
        self.serve.wait_http()
        for i in range(sc.workers):
            w = DulyProc("worker", f"worker{i + 1}", env, self.root,
                         args=["--concurrency", str(CONCURRENCY)])  # fmt: skip
            self.workers.append(w)
            self.started(w)
        self.api = Api(self.serve.port or 0, key)
        self.db = sa.create_engine(self.url, poolclass=sa.NullPool)
        for i in range(RECIPIENTS):
            self.api.call("PUT", f"/v1/recipients/r{i}",
                          {"name": f"R {i}", "email": f"r{i}@faults.test"})  # fmt: skip

    def load(self) -> int:
        """Upsert the subjects through the batch API; returns the deliveries planned."""
        sc = self.sc
        lead = 6.0 + sc.n / (1500.0 if sc.backend == "sqlite" else 700.0)
        t0 = time.time() + lead
        self.t_first_due, self.t_last_due = t0, t0 + sc.spread
        planned = 0
        for start in range(0, sc.n, 1000):
            items = []
            for i in range(start, min(sc.n, start + 1000)):
                due = t0 + (sc.spread * i / sc.n if sc.spread else 0.0)
                self.due_of[f"job/j{i:06d}"] = due
                items.append({
                    "kind": "job", "key": f"j{i:06d}",
                    "attributes": {"due_at": datetime.fromtimestamp(due, UTC).isoformat()},
                    "recipients": {"owner": f"r{i % RECIPIENTS}"},
                })  # fmt: skip
            out = self.api.call("POST", "/v1/subjects:batch", {"subjects": items})
            if out["failed"]:
                raise RuntimeError(f"batch refused items: {out['results'][:3]}")
            planned += sum(r["planned"] or 0 for r in out["results"])
        took = time.time() - (t0 - lead)
        log(f"  loaded {sc.n} subjects ({planned} deliveries) in {took:.1f} s; "
            f"first due {'in %.1f s' % (t0 - time.time()) if t0 > time.time() else 'already'}")  # fmt: skip
        if time.time() > t0:
            self.notes.append(f"loading took {took:.0f} s, past the first due time")
        return planned

    # ------------------------------------------------------------------ watching

    def query(self, sql: str, **params: Any) -> list[Any] | None:
        """Rows, or None when the database cannot be read right now."""
        assert self.db is not None
        try:
            with self.db.connect() as c:
                return list(c.execute(sa.text(sql), params))
        except Exception:
            return None

    def open_rows(self) -> int | None:
        rows = self.query("SELECT count(*) FROM deliveries WHERE state IN ('pending','sending')")
        return None if rows is None else int(rows[0][0])

    def watch(self) -> None:
        """Map client ports to processes while the scenario runs."""
        while not self.stop.wait(0.4):
            now = time.time()
            for port, pid in tcp_ports_to(self.live_pids(), self.sink.port).items():
                seen = self.port_pids.setdefault(port, [])
                if not seen or seen[-1][1] != pid:
                    seen.append((now, pid))

    def pid_of(self, port: int, t: float) -> int | None:
        seen = self.port_pids.get(port)
        if not seen:
            return None
        best = seen[0][1]
        for first, pid in seen:
            if first <= t + 1.0:
                best = pid
        return best

    def arrived(self) -> int:
        return self.sink.poll()

    def wait_arrived(self, fraction: float, limit: float = 900) -> bool:
        end = time.monotonic() + limit
        while self.arrived() < fraction * self.sc.n:
            if self.stop.is_set() or time.monotonic() > end:
                return False
            time.sleep(0.2)
        return True

    def sleep_until(self, t: float) -> None:
        while time.time() < t and not self.stop.is_set():
            time.sleep(min(0.2, max(0.0, t - time.time())))

    # ------------------------------------------------------------------ faults

    def _sending(self, owner_pid: int | None = None) -> list[Any]:
        sql = ("SELECT id, rule, step, occurrence, subject, recipient, channel "
               "FROM deliveries WHERE state = 'sending'")  # fmt: skip
        if owner_pid is not None:
            sql += f" AND lease_owner LIKE '%:{owner_pid}:%'"
        for _ in range(50):
            rows = self.query(sql)
            if rows is not None:
                return rows
            time.sleep(0.2)
        return []

    def _exposure(self, f: Fault, rows: list[Any]) -> None:
        """``rows`` were left as sending by the fault: how many had reached the sink."""
        time.sleep(0.3)  # what the sink accepted before the fault is in its log by now
        self.arrived()
        mids = {r[0]: message_id(*r[1:]) for r in rows}
        f.orphaned = len(mids)
        f.orphan_ids = set(mids)
        # an arrival counted at an earlier fault is not this one's (a row can be orphaned,
        # retaken and orphaned again before its new holder sent it)
        f.exposed = 0
        for m in mids.values():
            if self.sink.count[m] > self.accounted.get(m, 0):
                f.exposed += 1
                self.accounted[m] = self.sink.count[m]

    def kill(self, p: DulyProc, restart: bool = True) -> Fault:
        f = Fault(kind=f"kill -9 {p.name}", at=time.time(), bound=CONCURRENCY)
        pid = p.kill9()
        self._exposure(f, self._sending(pid))
        if restart:
            self.started(p)
            f.over = time.time()
            if p.kind == "serve":
                try:
                    p.wait_http()
                except RuntimeError as exc:
                    f.note = str(exc)[:200]
        f.over = f.over or time.time()
        f.pids = self.live_pids()
        self.faults.append(f)
        return f

    def db_fault(self, kind: str, action: Callable[[], None]) -> Fault:
        """A fault of the database every process shares: sends in flight in all of them."""
        before = {r[0]: r for r in self._sending()}
        f = Fault(kind=kind, at=time.time(), bound=CONCURRENCY * len(self.procs))
        action()
        f.over = time.time()
        # the processes' chance to record what they sent meanwhile, well within a lease
        time.sleep(5.0)
        still = {r[0] for r in self._sending()}
        self._exposure(f, [r for i, r in before.items() if i in still])
        f.pids = self.live_pids()
        self.faults.append(f)
        return f

    def relay_fault(self, kind: str, over: float) -> Fault:
        f = Fault(kind=kind, at=time.time(), over=over, bound=0)
        f.pids = self.live_pids()
        self.faults.append(f)
        return f

    # ------------------------------------------------------------------ the run

    def run(self) -> dict[str, Any]:
        sc = self.sc
        t_start = time.time()
        self.setup()
        watcher = threading.Thread(target=self.watch, daemon=True)
        watcher.start()
        planned = self.load()
        error = None
        try:
            if sc.inject is not None:
                sc.inject(self)
        except Exception as exc:  # the fault plan broke: report it, measure what there is
            error = f"fault injection failed: {exc!r}"
            log(traceback.format_exc())
        # wait for the drain: nothing pending or sending, the sink quiet
        end = max(time.time(), self.t_last_due) + sc.timeout
        last_log = 0.0
        quiet_since = None
        while time.time() < end:
            n_open = self.open_rows()
            got = self.arrived()
            if time.time() - last_log > 15:
                log(f"  {sc.name}: {got} arrivals, {n_open} open")
                last_log = time.time()
            if n_open == 0 and time.time() > self.t_last_due:
                quiet_since = quiet_since or time.time()
                if time.time() - quiet_since > 2.0:
                    break
            else:
                quiet_since = None
            time.sleep(0.5)
        timed_out = time.time() >= end
        self.stop.set()
        watcher.join(2)
        self.arrived()
        result = self.measure(planned, timed_out)
        result["error"] = error
        result["seconds"] = round(time.time() - t_start, 1)
        return result

    def close(self) -> None:
        self.stop.set()
        for p in self.procs:
            p.stop(20)
        self.sink.close()
        if self.db is not None:
            self.db.dispose()
        if self.sc.backend == "pg" and self.cluster is not None:
            try:
                self.cluster.drop_database(self.dbname)
            except Exception:
                log(f"  could not drop {self.dbname}")
        if self.mount is not None:
            subprocess.run(["umount", "-l", str(self.mount)], check=False)

    # ------------------------------------------------------------------ figures

    def measure(self, planned_api: int, timed_out: bool) -> dict[str, Any]:
        sc = self.sc
        rows = None
        for _ in range(100):
            rows = self.query(
                "SELECT id, rule, step, occurrence, subject, recipient, channel, state, "
                "due_at, attempts, error_count FROM deliveries"
            )
            if rows is not None:
                break
            time.sleep(0.5)
        rows = rows or []
        first: dict[str, float] = {}
        for t, _port, mid in self.sink.arrivals:
            first.setdefault(mid, t)
        planned_mids: dict[str, Any] = {}
        states: Counter[str] = Counter()
        lost: list[Any] = []
        late: Counter[str] = Counter()
        late_max: dict[str, float] = {}
        orphan_ids = set().union(*(f.orphan_ids for f in self.faults)) if self.faults else set()
        windows = [(f.at, f.over) for f in self.faults if f.over > f.at]
        lateness: list[float] = []
        for r in rows:
            rid, state, due, attempts, errors = r[0], r[7], r[8], r[9], r[10]
            mid = message_id(*r[1:7])
            planned_mids[mid] = r
            states[state] += 1
            if mid not in first:
                if state not in NOT_LOST:
                    lost.append(r)
                continue
            # the time asked for: a row's due_at moves on when it is retried
            due_ts = self.due_of.get(r[4]) or _ts(due)
            delay = first[mid] - due_ts
            lateness.append(delay)
            if delay > LATE_S:
                if rid in orphan_ids:
                    why = "retaken after a crash"
                elif (errors or 0) > 0 or (attempts or 0) > 1:
                    why = "retried after a send error"
                elif any(a - 1 <= due_ts <= b for a, b in windows):
                    why = "due during a fault"
                elif sc.spread == 0:
                    why = "queued in the backlog"
                else:
                    why = "other"
                late[why] += 1
                late_max[why] = max(late_max.get(why, 0.0), delay)
        dup_mids = {m: c - 1 for m, c in self.sink.count.items() if c > 1}
        stray = sum(c for m, c in self.sink.count.items() if m not in planned_mids)
        exposed_mids: set[str] = set()
        by_id = {r[0]: r for r in rows}
        for rid in orphan_ids:
            if rid in by_id:
                exposed_mids.add(message_id(*by_id[rid][1:7]))
        unexplained = sum(c for m, c in dup_mids.items() if m not in exposed_mids)
        # how long the rows a fault left as sending waited for someone to take them again
        times_of: dict[str, list[float]] = {}
        for t, _port, mid in self.sink.arrivals:
            times_of.setdefault(mid, []).append(t)
        retake: list[float] = []
        never = 0
        for f in self.faults:
            for rid in f.orphan_ids:
                if rid not in by_id:
                    continue
                # after the fault is over: earlier arrivals are the crashed sends themselves
                mid = message_id(*by_id[rid][1:7])
                after = [t for t in times_of.get(mid, []) if t > f.over]
                if after:
                    retake.append(min(after) - f.at)
                elif by_id[rid][7] in ("pending", "sending"):
                    never += 1
        recorded = self.check_recorded(
            [planned_mids[m][0] for m in dup_mids if m in planned_mids][:40]
        )
        recover = self.recovery()
        logs = "".join(p.log_text() for p in self.procs)
        crashes = [f for f in self.faults if f.bound]
        res = {
            "scenario": sc.name,
            "title": sc.title,
            "backend": "PostgreSQL" if sc.backend == "pg" else "SQLite",
            "processes": 1 + sc.workers,
            "planned": len(rows),
            "planned_api": planned_api,
            "sent": sum(1 for m in planned_mids if m in first),
            "lost": len(lost),
            "lost_states": dict(Counter(r[7] for r in lost)),
            "states": dict(states),
            "duplicates": sum(dup_mids.values()),
            "duplicated_messages": len(dup_mids),
            "max_copies": max(self.sink.count.values(), default=0),
            "unexplained_duplicates": unexplained,
            "stray_arrivals": stray,
            "faults": len(self.faults),
            "crashes": len(crashes),
            "in_flight_bound": sum(f.bound for f in crashes),
            "in_flight_measured": sum(f.exposed or 0 for f in crashes),
            "in_flight_max": max((f.exposed or 0 for f in crashes), default=0),
            "in_flight_over_bound": sum(1 for f in crashes if (f.exposed or 0) > f.bound),
            "orphaned": sum(f.orphaned or 0 for f in crashes),
            "retaken_p50_s": round(statistics.median(retake), 1) if retake else None,
            "retaken_max_s": round(max(retake), 1) if retake else None,
            "never_retaken": never,
            "max_attempts": max((r[9] or 0 for r in rows), default=0),
            "late": sum(late.values()),
            "late_why": dict(late),
            "late_max_s": {k: round(v, 1) for k, v in late_max.items()},
            "lateness_p50_s": round(statistics.median(lateness), 2) if lateness else None,
            "lateness_max_s": round(max(lateness), 1) if lateness else None,
            "recovery": recover,
            "recorded_possibly_sent": recorded,
            "timed_out": timed_out,
            "tracebacks": logs.count("Traceback (most recent call last)"),
            "thread_deaths": logs.count("Exception in thread"),
            "notes": self.notes,
            "fault_list": [
                {
                    "kind": f.kind,
                    "at": round(f.at, 2),
                    "down_s": round(f.over - f.at, 2),
                    "bound": f.bound,
                    "exposed": f.exposed,
                    "orphaned": f.orphaned,
                    "note": f.note,
                }
                for f in self.faults
            ],  # fmt: skip
        }
        return res

    def check_recorded(self, ids: list[int]) -> dict[str, int]:
        """Of these duplicated deliveries, how many say in ``GET /v1/deliveries/{id}`` that
        they may have gone out before (``possibly_sent_before``, or an attempt whose outcome
        is ``unknown``)."""
        out = {"checked": 0, "recorded": 0}
        for rid in ids:
            try:
                d = self.api.call("GET", f"/v1/deliveries/{rid}", timeout=10)
            except Exception:
                continue
            out["checked"] += 1
            unknown = any(a.get("outcome") == "unknown" for a in d.get("attempt_log") or [])
            if d.get("possibly_sent_before") or unknown:
                out["recorded"] += 1
        return out

    def recovery(self) -> dict[str, Any]:
        """For each fault, seconds from its end until every process alive then had sent
        again (a process killed before it sent is left out)."""
        by_pid: dict[int, list[float]] = {}
        for t, port, _mid in self.sink.arrivals:
            pid = self.pid_of(port, t)
            if pid is not None:
                by_pid.setdefault(pid, []).append(t)
        last_arrival = max((t for t, _, _ in self.sink.arrivals), default=0.0)
        times: list[float] = []
        silent: list[str] = []
        no_work = 0
        for f in self.faults:
            if last_arrival <= f.over:
                no_work += 1
                continue
            worst: float | None = None
            for pid in f.pids:
                nxt = next((t for t in by_pid.get(pid, []) if t > f.over), None)
                if nxt is not None:
                    worst = max(worst or 0.0, nxt - f.over)
                    continue
                died = next(
                    (g.at for g in self.faults if g.at > f.over and pid not in g.pids), None
                )
                # silent only if the others kept sending meanwhile (there was work to take)
                until = died if died is not None else last_arrival + 1
                others = sum(
                    1 for t, port, _ in self.sink.arrivals
                    if f.over + 10 < t < until and self.pid_of(port, t) != pid
                )  # fmt: skip
                if others >= 20:
                    silent.append(f"{self.pid_names.get(pid, pid)} after {f.kind}")
            if worst is None:
                no_work += 1
            else:
                times.append(worst)
        return {
            "p50_s": round(statistics.median(times), 1) if times else None,
            "max_s": round(max(times), 1) if times else None,
            "silent": silent,
            "no_work_left": no_work,
        }


def _ts(v: Any) -> float:
    if isinstance(v, str):
        v = datetime.fromisoformat(v)
    if v.tzinfo is None:
        v = v.replace(tzinfo=UTC)
    return float(v.timestamp())


# --------------------------------------------------------------------------- fault plans


def kills_light(run: Run) -> None:
    """Kills at random times over the window the deliveries are due in."""
    k = run.sc.params["kills"]
    times = sorted(run.rng.uniform(run.t_first_due + 1, run.t_last_due) for _ in range(k))
    for t in times:
        run.sleep_until(t)
        if run.stop.is_set():
            return
        run.kill(run.rng.choice(run.workers))


def kills_backlog(run: Run) -> None:
    """Once the drain has started, a kill every few seconds until enough or drained."""
    k, lo, hi = run.sc.params["kills"], *run.sc.params["every"]
    run.sleep_until(run.t_first_due)
    run.wait_arrived(0.01, limit=120)
    for i in range(k):
        time.sleep(run.rng.uniform(lo, hi))
        if run.open_rows() == 0:
            run.notes.append(f"the drain ended after {i} kills")
            return
        procs = run.workers or [run.serve]
        run.kill(run.rng.choice(procs))  # type: ignore[arg-type]


def pg_restarts(run: Run) -> None:
    assert run.cluster is not None
    for fraction in run.sc.params["at"]:
        if not run.wait_arrived(fraction):
            run.notes.append(f"never reached {fraction:.0%} sent; no restart")
            return
        run.db_fault("PostgreSQL restart", run.cluster.restart)


def slow_relay(run: Run) -> None:
    """The sink is slow from before the first due time to the end."""
    run.sink.mode("slow", str(run.sc.params["slow"]))


def relay_outage(run: Run) -> None:
    p = run.sc.params
    run.sleep_until(run.t_first_due + p["start"])
    t0 = time.time()
    run.sink.mode("451")
    run.sleep_until(t0 + p["451"])
    run.sink.mode("refuse")
    run.sleep_until(t0 + p["451"] + p["refuse"])
    run.sink.mode("normal")
    f = run.relay_fault(f"relay 451 {p['451']:.0f} s, refusing {p['refuse']:.0f} s", time.time())
    f.at = t0


def disk_full(run: Run) -> None:
    """Fill the tmpfs the SQLite database lives on, for a while, then free it."""
    assert run.mount is not None
    p = run.sc.params
    run.sleep_until(run.t_first_due + p["start"])
    filler = run.mount / "filler"

    def fill_for_a_while() -> None:
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for size in (1 << 20, 4096, 512):
                try:
                    while True:
                        os.write(fd, b"\0" * size)
                except OSError:
                    pass
            log(f"  disk full ({os.statvfs(run.mount).f_bavail} blocks free) for {p['full']} s")
            time.sleep(p["full"])
        finally:
            os.close(fd)
            filler.unlink()

    run.db_fault(f"disk full {p['full']:.0f} s", fill_for_a_while)


def scenarios(short: bool) -> list[Scenario]:
    s = short
    fast = {"DULY_LEASE": "10", "DULY_BREAKER_COOLDOWN": "5"} if s else {}
    return [
        Scenario(
            "kill-light",
            "pg",
            "kill -9 of workers at light load",
            n=400 if s else 20_000,
            spread=25 if s else 480,
            workers=3,
            inject=kills_light,
            params={"kills": 4 if s else 100},
            timeout=90 if s else 420,
            env=fast,
        ),
        Scenario(
            "kill-backlog",
            "pg",
            "kill -9 of workers in a backlog",
            n=1_500 if s else 20_000,
            spread=0,
            workers=3,
            inject=kills_backlog,
            params={"kills": 4 if s else 100, "every": (1.0, 2.0) if s else (0.5, 2.0)},
            timeout=90 if s else 600,
            env=fast,
        ),
        Scenario(
            "pg-restart",
            "pg",
            "PostgreSQL restarted twice mid-drain",
            n=1_000 if s else 10_000,
            spread=30 if s else 180,
            workers=3,
            inject=pg_restarts,
            params={"at": (0.25, 0.6)},
            timeout=90 if s else 420,
            env=fast,
        ),
        Scenario(
            "slow-relay",
            "pg",
            "a relay taking 20 s per message"
            if not s
            else "a relay taking 3 s per message (lease 10 s)",
            n=24 if s else 60,
            spread=0,
            workers=1,
            inject=slow_relay,
            params={"slow": 3 if s else 20},
            timeout=90 if s else 900,
            env=fast,
        ),
        Scenario(
            "relay-outage",
            "sqlite",
            "relay answering 451, then refusing connections",
            n=200 if s else 5_000,
            spread=40 if s else 1_320,
            inject=relay_outage,
            params={"start": 5 if s else 120, "451": 10 if s else 600, "refuse": 10 if s else 600},
            timeout=120 if s else 900,
            env=fast,
            retry="    retry: {attempts: 3, delay: 5s, factor: 2}\n" if s else "",
        ),  # fmt: skip
        Scenario(
            "sqlite-kill",
            "sqlite",
            "kill -9 of `duly serve` on SQLite",
            n=2_500 if s else 15_000,
            spread=0,
            inject=kills_backlog,
            params={"kills": 3 if s else 10, "every": (0.5, 1.5) if s else (2.0, 5.0)},
            timeout=90 if s else 600,
            env=fast,
        ),
        Scenario(
            "sqlite-full",
            "sqlite",
            "SQLite's disk full for a while",
            n=300 if s else 3_000,
            spread=30 if s else 180,
            inject=disk_full,
            params={"start": 5 if s else 30, "full": 10 if s else 60},
            tmpfs_mb=64,
            timeout=90 if s else 420,
            env=fast,
        ),
    ]


# --------------------------------------------------------------------------- report


def render(results: list[dict[str, Any]], head: str) -> str:
    lines = [head, ""]
    cols = ("scenario", "planned", "sent", "lost", "dup", "in flight (≤ bound)", "late>60s",
            "back (p50/max)")  # fmt: skip
    table = [cols]
    for r in results:
        if r.get("crashed"):
            table.append((r["scenario"], "error", "", "", "", "", "", ""))
            continue
        rec = r["recovery"]
        table.append((
            r["scenario"],
            f"{r['planned']:,}",
            f"{r['sent']:,}",
            f"{r['lost']:,}" + (" ✗" if r["lost"] else " ✓"),
            f"{r['duplicates']:,}",
            f"{r['in_flight_measured']} (≤ {r['in_flight_bound']}, max {r['in_flight_max']}"
            + (f", {r['in_flight_over_bound']} crash over ✗)" if r["in_flight_over_bound"] else ")")
            if r["crashes"] else "—",
            f"{r['late']:,}",
            "—" if rec["max_s"] is None else f"{rec['p50_s']} / {rec['max_s']} s",
        ))  # fmt: skip
    widths = [max(len(str(row[i])) for row in table) for i in range(len(cols))]
    for j, row in enumerate(table):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    for r in results:
        if r.get("crashed"):
            lines.append(f"{r['scenario']}: could not run: {r['crashed']}")
            continue
        rec = r["recovery"]
        lines.append(f"{r['scenario']} — {r['title']} ({r['backend']}, "
                     f"{r['processes']} process{'es' if r['processes'] > 1 else ''}, "
                     f"{r['seconds']:.0f} s)")  # fmt: skip
        bits = [f"faults {r['faults']}", f"states {r['states']}",
                f"most attempts {r['max_attempts']}"]  # fmt: skip
        if r["crashes"]:
            bits.append(f"rows orphaned {r['orphaned']:,}")
            if r["retaken_max_s"] is not None:
                bits.append(f"sent again after p50 {r['retaken_p50_s']} s, max "
                            f"{r['retaken_max_s']} s")  # fmt: skip
            if r["never_retaken"]:
                bits.append(f"{r['never_retaken']} never sent again")
            bits.append(f"crashes over the in-flight bound {r['in_flight_over_bound']}")
        if r["duplicates"]:
            bits.append(f"duplicated messages {r['duplicated_messages']:,} "
                        f"(most copies {r['max_copies']}), "
                        f"{r['unexplained_duplicates']} not from a crash's in-flight sends")  # fmt: skip
            rp = r["recorded_possibly_sent"]
            bits.append(f"recorded as possibly sent: {rp['recorded']} of {rp['checked']} checked")
        lines.append("    " + "; ".join(bits))
        if r["late"]:
            why = ", ".join(f"{k} {v:,} (max {r['late_max_s'][k]:.0f} s)"
                            for k, v in r["late_why"].items())  # fmt: skip
            lines.append(f"    late: {why}")
        lines.append(f"    lateness p50 {r['lateness_p50_s']} s, max {r['lateness_max_s']} s")
        if rec["silent"]:
            lines.append(f"    never sent again: {', '.join(rec['silent'][:6])}"
                         + (f" (+{len(rec['silent']) - 6})" if len(rec["silent"]) > 6 else ""))  # fmt: skip
        if r["lost"]:
            lines.append(f"    lost by state at the end: {r['lost_states']}")
        if r["tracebacks"] or r["thread_deaths"]:
            lines.append(f"    process logs: {r['tracebacks']} tracebacks, "
                         f"{r['thread_deaths']} 'Exception in thread'")  # fmt: skip
        if r["stray_arrivals"]:
            lines.append(f"    {r['stray_arrivals']} arrivals of Message-IDs not planned")
        for note in (
            r["notes"]
            + ([r["error"]] if r.get("error") else [])
            + (["timed out waiting for the drain"] if r["timed_out"] else [])
        ):
            lines.append(f"    note: {note}")
    return "\n".join(lines)


def source_version() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                             capture_output=True, text=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=HERE,
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
        return sha + (" + uncommitted src/ changes" if dirty else "")
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--short", action="store_true", help="the reduced suite (CI, ~4 min)")
    ap.add_argument("--only", default="", help="comma-separated scenario names")
    ap.add_argument("--pg-port", type=int, default=int(os.environ.get("DULY_FAULTS_PG_PORT", 5544)))
    ap.add_argument("--pg-cluster", default="dulyfaults")
    ap.add_argument("--keep-cluster", action="store_true", help="leave the cluster running")
    ap.add_argument("--json", default="", help="also write the figures to this file")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    a = ap.parse_args(argv)
    all_sc = scenarios(a.short)
    if a.list:
        for sc in all_sc:
            print(f"{sc.name:14} {sc.backend:6} n={sc.n:<6} {sc.title}")
        return 0
    chosen = [s.strip() for s in a.only.split(",") if s.strip()]
    unknown = set(chosen) - {s.name for s in all_sc}
    if unknown:
        ap.error(f"unknown scenario(s) {', '.join(sorted(unknown))}")
    todo = [s for s in all_sc if not chosen or s.name in chosen]
    cluster = None
    if any(s.backend == "pg" for s in todo):
        why = PgCluster.tools_missing()
        if why:
            print(f"cannot run the PostgreSQL scenarios: {why}", file=sys.stderr)
            return 2
        cluster = PgCluster(a.pg_cluster, a.pg_port)
        cluster.ensure()
    started = datetime.now(UTC)
    head = (f"duly fault suite{' (short)' if a.short else ''} — {started:%Y-%m-%d %H:%M} UTC, "
            f"duly {source_version()}, {os.cpu_count()} CPUs")  # fmt: skip
    results: list[dict[str, Any]] = []
    root = Path(tempfile.mkdtemp(prefix="duly-faults-"))
    try:
        for sc in todo:
            log(f"{sc.name}: {sc.title} — {sc.n:,} deliveries")
            d = root / sc.name
            d.mkdir()
            run = None
            try:
                run = Run(sc, d, cluster)
                res = run.run()
            except Exception as exc:
                log(traceback.format_exc())
                res = {"scenario": sc.name, "crashed": f"{type(exc).__name__}: {exc}"[:500]}
            finally:
                if run is not None:
                    run.close()
            results.append(res)
            if not res.get("crashed"):
                log(f"{sc.name}: planned {res['planned']}, sent {res['sent']}, lost "
                    f"{res['lost']}, duplicates {res['duplicates']}, late {res['late']}")  # fmt: skip
    finally:
        if cluster is not None and not a.keep_cluster:
            cluster.close()
        shutil.rmtree(root, ignore_errors=True)
    text = render(results, head)
    print(text)
    OUT_DIR.mkdir(exist_ok=True)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    kind = ("short" if a.short else "full") + ("-" + "+".join(chosen) if chosen else "")
    for path in (OUT_DIR / f"faults-{kind}-latest.txt", OUT_DIR / f"faults-{stamp}.txt"):
        path.write_text(text + "\n")
    blob = json.dumps({"head": head, "results": results}, indent=1, default=str)
    (OUT_DIR / f"faults-{kind}-latest.json").write_text(blob)
    if a.json:
        Path(a.json).write_text(blob)
    bad = [r["scenario"] for r in results if r.get("crashed") or r.get("lost")]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
