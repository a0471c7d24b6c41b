"""Measure the HTTP API of a real `duly serve` against its targets, on SQLite and PostgreSQL.

    .venv/bin/python bench/api.py                 # both backends, ~2 min
    .venv/bin/python bench/api.py --quick         # shorter windows (~1 min)
    .venv/bin/python bench/api.py --postgres none # SQLite only
    .venv/bin/python bench/api.py --profile       # + py-spy flame graphs of the server
    .venv/bin/python bench/api.py --backends postgresql --only single --concurrency 8 --workers 2

Rows:

1. single upserts/s   PUT /v1/subjects/job/{key}, a new subject each, ``--concurrency``
                      requests in flight (closed loop; default 1: one keep-alive client)
                      for ``--seconds``; p50/p99 latency; the server's CPU s per 1,000
2. batch subjects/s   POST /v1/subjects:batch with 1,000 new subjects per call, one call
                      in flight; p50/p99 latency per call
3. p99 at 200 req/s   PUT upserts sent at a fixed 200/s (open loop: latency counts from
                      when a request was due to be sent, so a stalled server is not hidden)

Each subject plans 3 deliveries (``bench`` rule, due in 30 days: the dispatcher stays idle).
The server is ``duly serve`` in its own process with a fresh database: SQLite in a temporary
folder, PostgreSQL a scratch database ``duly_bench_api`` created and dropped here (AUTOCOMMIT).
The client is a lean asyncio HTTP/1.1 keep-alive client in this process (one CPU of the two
is the client's), so the numbers are the server's and not httpx's. ``--workers N`` runs
``duly serve --workers N`` (N HTTP processes beside the main one); the CPU figures are then
split: the server's processes (all of them), the PostgreSQL backends of the scratch
database (from /proc) and the client, each per 1,000 subjects. Everything it starts is
stopped and removed when it exits. The table is also saved to ``bench/out/api-*.txt``
(``api-latest.json`` holds the raw figures).

The targets and the figures after its write-path work (server CPU per 1,000
upserts, before/after): bench/README.md, "The HTTP API's write path". Older figures, with 8
requests in flight and the targets of the time, on this machine (2 CPUs shared with other work, load average ~4; 2026-11-26 12:12,
bench/out/api-20261126-121224.txt):

    row                                        target       SQLite            PostgreSQL
    1 single upserts/s (8 in flight, 10 s)     >= 1,000/s   193/s MISS        139/s MISS
        p50 / p99                                           26.9 / 346.7 ms   54.1 / 149.1 ms
    2 batch subjects/s (1,000/call, 10 calls)  >= 10,000/s  5,598/s MISS      3,329/s MISS
        p50 / p99 per call                                  153 / 257 ms      286 / 438 ms
    3 p99 single upsert at 200 req/s (10 s)    <= 50 ms     712 ms MISS       7,554 ms MISS
        p50 / achieved rate                                 61.5 ms / 197/s   4,727 ms / 117/s

No request failed, no 5xx, no "database is locked". Runs on this shared machine vary by
+-30% (SQLite single upserts 126-231/s, batch 2,000-5,600/s over the day's runs).

Every target is missed: one single upsert costs ~4-6 ms of the server's one GIL, so one
``duly serve`` process tops out near 200-250/s, below the 200/s of row 3 once the machine is
busy. Where the time goes (py-spy, ``--profile``): the dispatcher woken by every upsert even
though nothing is due for 30 days (claim + next_due, ~25-30% of the GIL, and on SQLite a
second BEGIN IMMEDIATE per upsert); the PUT answer re-reading the subject and all its
deliveries (~12%); uvicorn's pure-Python h11 + the Starlette/FastAPI stack (~35%);
SQLAlchemy Core statement building per query (~8%); for batches the planner (~30%, with
``AtExpr.is_before_anchor`` and ``json.dumps`` in ``Identity.db_key`` per row) and the
JSON/pydantic of 1,000 items each way (~25%). ``--profile`` writes the flame graphs
(bench/out/api-profile-*.svg; the sampler slows the server, so its figures are not the
benchmark's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    OUT_DIR,
    DulyProc,
    ScratchPostgres,
    _reap_all,
    duly_env,
    forget,
    free_port,
    log,
    migrate_and_key,
    pct,
    remove_sqlite,
    report_console,
    save_report,
)
from _harness import spawn as _spawn  # noqa: E402

RULES = """
timezone: UTC
rules:
  - name: bench
    subject: job
    if: "status == 'open'"
    to: [owner]
    template: bench
    steps:
      - name: first
        at: "due_at"
      - name: second
        at: "due_at + 1h"
      - name: third
        at: "due_at + 2h"
"""
TEMPLATE = "Reminder: {{ subject.key }} ({{ step.name }}) for {{ recipient.name }}\n"
RECIPIENTS = 200
BATCH = 1_000
OPEN_LOOP_RATE = 200.0
MAX_CONNECTIONS = 256  # open-loop client: connections at most (file descriptors)
DEFAULT_PG = "postgresql+psycopg://root@127.0.0.1:5432/duly_bench_api"

# the target case: one client, one upsert per call, keep-alive (--concurrency 1)
TARGET_SINGLE = {"SQLite": 1_500.0, "PostgreSQL": 1_000.0}  # upserts/s
TARGET_BATCH = {"SQLite": 25_000.0, "PostgreSQL": 15_000.0}  # subjects/s
TARGET_P99_MS = 50.0  # at OPEN_LOOP_RATE


# --------------------------------------------------------------------------- processes

# --------------------------------------------------------------------------- databases


class Backend:
    """Hands out a fresh, empty database of one kind (``duly serve``'s set-up migrates it)."""

    name: str

    def fresh(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SqliteBackend(Backend):
    name = "SQLite"

    def __init__(self, root: Path) -> None:
        self.path = root / "bench-api.db"

    def fresh(self) -> str:
        return f"sqlite:///{self.path}"

    def close(self) -> None:
        remove_sqlite(self.path)


class PostgresBackend(Backend):
    """A scratch database (the URL's, by default ``duly_bench_api``), dropped and created
    here."""

    name = "PostgreSQL"

    def __init__(self, url: str) -> None:
        self.db = ScratchPostgres(url, default="duly_bench_api")

    def fresh(self) -> str:
        return self.db.create()

    def close(self) -> None:
        self.db.close()

    def check(self) -> None:
        self.db.check()


# --------------------------------------------------------------------------- the server


@dataclass
class Server:
    url: str
    host: str
    port: int
    key: str
    proc: subprocess.Popen[Any]
    log_path: Path
    database: str | None = None


@contextmanager
def duly_serve(root: Path, database: str, workers: int = 1) -> Iterator[Server]:
    """`duly serve` on ``database`` (migrated here) with the bench rules and a new API key,
    once ``/readyz`` answers."""
    tdir = root / "templates"
    tdir.mkdir(exist_ok=True)
    (tdir / "bench.email.txt").write_text(TEMPLATE)
    rules = root / "duly.yaml"
    rules.write_text(RULES)
    port = free_port()
    env = duly_env(database, rules, DULY_PORT=str(port))
    key = migrate_and_key(env, root)
    args = ["--workers", str(workers)] if workers > 1 else []
    serve = DulyProc("serve", "serve", env, root, args=args, port=port)
    serve.start()
    try:
        serve.wait_http(60, path="/readyz")
        assert serve.proc is not None
        yield Server(
            f"http://127.0.0.1:{port}", "127.0.0.1", port, key, serve.proc, serve.logs[-1], database
        )
    finally:
        serve.stop(30)


# --------------------------------------------------------------------------- the client


class Conn:
    """One HTTP/1.1 keep-alive connection: a request at a time, Content-Length bodies."""

    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.head = (
            f"Host: {srv.host}:{srv.port}\r\nAuthorization: Bearer {srv.key}\r\n"
            "Content-Type: application/json\r\n"
        ).encode()

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.srv.host, self.srv.port)
        assert self.reader is not None
        self.writer.write(
            f"{method} {path} HTTP/1.1\r\n".encode()
            + self.head
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length, close, chunked = 0, False, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            data = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                data += await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            data = await self.reader.readexactly(length)
        if close:
            self.close()
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclass
class Run:
    n: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


class Keys:
    """New subject keys, never reused within a server's life."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.i = prefix, 0

    def next(self) -> int:
        self.i += 1
        return self.i


FAR = (datetime.now(UTC) + timedelta(days=30)).isoformat()


def subject_body(i: int) -> bytes:
    return json.dumps(
        {
            "attributes": {"status": "open", "due_at": FAR},
            "recipients": {"owner": f"r{i % RECIPIENTS}"},
        }
    ).encode()


def batch_body(start: int, n: int, prefix: str) -> bytes:
    items = [
        {"kind": "job", "key": f"{prefix}{i:08d}", "attributes": {"status": "open", "due_at": FAR},
         "recipients": {"owner": f"r{i % RECIPIENTS}"}}
        for i in range(start, start + n)
    ]  # fmt: skip
    return json.dumps({"subjects": items}).encode()


async def _one(conn: Conn, run: Run, method: str, path: str, body: bytes, t0: float) -> None:
    try:
        status, data = await conn.request(method, path, body)
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        conn.close()
        run.error(type(exc).__name__)
        return
    run.latencies_ms.append((time.perf_counter() - t0) * 1000)
    run.n += 1
    if status != 200:
        run.error(f"{status} {data[:120].decode(errors='replace')}")


async def closed_loop(srv: Server, keys: Keys, seconds: float, concurrency: int) -> Run:
    """``concurrency`` workers, each sending its next upsert when the last one is answered."""
    run = Run()
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        conn = Conn(srv)
        try:
            while time.perf_counter() < stop:
                i = keys.next()
                path = f"/v1/subjects/job/{keys.prefix}{i:08d}"
                await _one(conn, run, "PUT", path, subject_body(i), time.perf_counter())
        finally:
            conn.close()

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    run.seconds = time.perf_counter() - t
    return run


async def batches(srv: Server, prefix: str, calls: int) -> Run:
    """``calls`` batch upserts of BATCH new subjects, one at a time."""
    run = Run()
    conn = Conn(srv)
    bodies = [batch_body(c * BATCH, BATCH, prefix) for c in range(calls)]
    t = time.perf_counter()
    for body in bodies:
        await _one(conn, run, "POST", "/v1/subjects:batch", body, time.perf_counter())
    run.seconds = time.perf_counter() - t
    conn.close()
    return run


async def open_loop(srv: Server, keys: Keys, rate: float, seconds: float) -> Run:
    """Upserts due at a fixed rate whatever the answers; latency from the due time (a
    request that waits for a connection counts that wait). Idle connections are reused; a
    new one is opened when all are busy, up to MAX_CONNECTIONS."""
    run = Run()
    idle: list[Conn] = []
    tasks: list[asyncio.Task[None]] = []
    n = int(rate * seconds)
    slots = asyncio.Semaphore(MAX_CONNECTIONS)
    t0 = time.perf_counter()

    async def send(due: float) -> None:
        async with slots:
            conn = idle.pop() if idle else Conn(srv)
            i = keys.next()
            path = f"/v1/subjects/job/{keys.prefix}{i:08d}"
            await _one(conn, run, "PUT", path, subject_body(i), due)
            idle.append(conn)

    for k in range(n):
        due = t0 + k / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(due)))
    await asyncio.gather(*tasks)
    run.seconds = time.perf_counter() - t0
    for c in idle:
        c.close()
    return run


async def add_recipients(srv: Server) -> None:
    conn = Conn(srv)
    for i in range(RECIPIENTS):
        body = json.dumps({"name": f"Recipient {i}", "email": f"r{i}@bench.test"}).encode()
        status, data = await conn.request("PUT", f"/v1/recipients/r{i}", body)
        if status not in (200, 201):
            raise RuntimeError(f"PUT recipient: {status} {data[:200]!r}")
    conn.close()


# --------------------------------------------------------------------------- profiling


@contextmanager
def profiled(srv: Server, name: str, enabled: bool) -> Iterator[None]:
    """py-spy record of the server while the block runs (--profile)."""
    if not enabled:
        yield
        return
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    OUT_DIR.mkdir(exist_ok=True)
    svg = OUT_DIR / f"api-profile-{name}.svg"
    p = _spawn([pyspy, "record", "--pid", str(srv.proc.pid), "--rate", "200", "--idle",
                "--format", "flamegraph", "-o", str(svg)],
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(1.0)  # attached
    try:
        yield
    finally:
        os.killpg(p.pid, signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            p.wait(60)
        finally:
            forget(p)
        log(f"profile: {svg}")


# --------------------------------------------------------------------------- phases


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far (/proc/PID/stat), which a
    loaded machine disturbs far less than wall-clock rates."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_by_pid(pids: Iterable[int]) -> dict[int, float]:
    """``cpu_seconds`` of each of ``pids`` still running."""
    out: dict[int, float] = {}
    for p in pids:
        try:
            out[p] = cpu_seconds(p)
        except (OSError, ValueError, IndexError):
            continue
    return out


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of ``pid`` and its descendants (``duly serve --workers N``'s HTTP
    processes and render processes), by pid."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    pids, frontier = {pid}, [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in pids]
        pids.update(kids)
        frontier.extend(kids)
    return _cpu_by_pid(pids)


def pg_backend_cpu(database_url: str | None) -> dict[int, float]:
    """CPU seconds of the PostgreSQL backends connected to the database, by pid (/proc:
    the server must run on this machine)."""
    if not database_url or not database_url.startswith("postgres"):
        return {}
    import psycopg

    dbname = database_url.rsplit("/", 1)[1].split("?")[0]
    base = database_url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0]
    with psycopg.connect(base + "/postgres", autocommit=True) as c:
        pids = [r[0] for r in c.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (dbname,)
        )]  # fmt: skip
    return _cpu_by_pid(pids)


def pg_sessions(database_url: str | None) -> int:
    """Sessions (connections) ever opened to the database (pg_stat_database, PostgreSQL
    14+); 0 for SQLite."""
    if not database_url or not database_url.startswith("postgres"):
        return 0
    import psycopg

    dbname = database_url.rsplit("/", 1)[1].split("?")[0]
    base = database_url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0]
    with psycopg.connect(base + "/postgres", autocommit=True) as c:
        row = c.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s", (dbname,)
        ).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _spent(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(v - before.get(p, 0.0) for p, v in after.items())


@contextmanager
def cpu_of(srv: Server, into: dict[str, Any], key: str) -> Iterator[None]:
    """Stores the CPU seconds spent in the block under ``into[key]`` (the server's
    processes) and ``into[key + "_pg"]``, ``into[key + "_client"]``."""
    before, pg_before = tree_cpu(srv.proc.pid), pg_backend_cpu(srv.database)
    s0 = pg_sessions(srv.database)
    c0 = time.process_time()
    try:
        yield
    finally:
        into[key + "_client"] = time.process_time() - c0
        # connections opened meanwhile: a backend that also ended in the block is missing
        # from the PostgreSQL CPU (its CPU went with it), so this says how complete it is
        into[key + "_sessions"] = pg_sessions(srv.database) - s0
        into[key] = _spent(before, tree_cpu(srv.proc.pid))
        into[key + "_pg"] = _spent(pg_before, pg_backend_cpu(srv.database))


def measure(backend: Backend, root: Path, a: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {}
    url = backend.fresh()
    sdir = root / backend.name.lower()
    sdir.mkdir()
    with duly_serve(sdir, url, a.workers) as srv:
        asyncio.run(add_recipients(srv))
        tag = backend.name[:2].lower()

        async def warm() -> None:
            await closed_loop(srv, Keys(f"W{tag}"), 1.0, a.concurrency)
            await batches(srv, f"WB{tag}", 1)

        asyncio.run(warm())

        cpu: dict[str, Any] = {}
        if "single" in a.only:
            with profiled(srv, f"{tag}-single", a.profile), cpu_of(srv, cpu, "s"):
                single = asyncio.run(closed_loop(srv, Keys(f"S{tag}"), a.seconds, a.concurrency))
            res["single"] = summarise(single, per=1, cpu=cpu["s"], more=cpu, key="s")
            log(f"{backend.name}: single upserts {res['single']['per_s']:,.0f}/s, "
                f"p50 {res['single']['p50_ms']:.1f} ms, p99 {res['single']['p99_ms']:.1f} ms; "
                f"CPU s per 1,000: server {res['single']['cpu_s_per_1000']:.2f} + PostgreSQL "
                f"{res['single']['pg_cpu_s_per_1000']:.2f}, client "
                f"{res['single']['client_cpu_s_per_1000']:.2f}; PostgreSQL sessions opened "
                f"{res['single']['pg_sessions_opened']}")  # fmt: skip
        if "batch" not in a.only and "rate" not in a.only:
            text = srv.log_path.read_text()
            res["server_errors"] = text.count("internal error on") + text.count("Traceback")
            res["database_locked"] = text.count("database is locked")
            return res

        with profiled(srv, f"{tag}-batch", a.profile), cpu_of(srv, cpu, "b"):
            batch = asyncio.run(batches(srv, f"B{tag}", a.batches))
        res["batch"] = summarise(batch, per=BATCH, cpu=cpu["b"], more=cpu, key="b")
        log(f"{backend.name}: batch {res['batch']['per_s']:,.0f} subjects/s, "
            f"p50 {res['batch']['p50_ms']:.0f} ms, p99 {res['batch']['p99_ms']:.0f} ms per call")  # fmt: skip

        time.sleep(1.0)  # let the server settle before the fixed-rate run
        with profiled(srv, f"{tag}-rate", a.profile), cpu_of(srv, cpu, "r"):
            fixed = asyncio.run(open_loop(srv, Keys(f"R{tag}"), OPEN_LOOP_RATE, a.rate_seconds))
        res["rate"] = summarise(fixed, per=1, cpu=cpu["r"], more=cpu, key="r")
        res["rate"]["offered_per_s"] = OPEN_LOOP_RATE
        log(f"{backend.name}: at {OPEN_LOOP_RATE:g}/s: p50 {res['rate']['p50_ms']:.1f} ms, "
            f"p99 {res['rate']['p99_ms']:.1f} ms, achieved {res['rate']['per_s']:.0f}/s")  # fmt: skip

        text = srv.log_path.read_text()
        res["server_errors"] = text.count("internal error on") + text.count("Traceback")
        res["database_locked"] = text.count("database is locked")
    return res


def summarise(
    run: Run,
    per: int,
    cpu: float = float("nan"),
    more: dict[str, Any] | None = None,
    key: str = "",
) -> dict[str, Any]:
    items = run.n * per
    pg = (more or {}).get(key + "_pg", float("nan"))
    client = (more or {}).get(key + "_client", float("nan"))
    return {
        "cpu_s": cpu,
        # the server's CPU seconds per 1,000 upserted subjects (all its processes)
        "cpu_s_per_1000": cpu * 1000 / items if items else float("nan"),
        # the PostgreSQL backends' of the scratch database, and this client's
        "pg_cpu_s_per_1000": pg * 1000 / items if items else float("nan"),
        "client_cpu_s_per_1000": client * 1000 / items if items else float("nan"),
        "pg_sessions_opened": (more or {}).get(key + "_sessions", 0),
        "requests": run.n,
        "seconds": run.seconds,
        "per_s": run.n * per / run.seconds if run.seconds else 0.0,
        "p50_ms": pct(run.latencies_ms, 50),
        "p99_ms": pct(run.latencies_ms, 99),
        "max_ms": max(run.latencies_ms, default=float("nan")),
        "errors": run.errors,
    }


# --------------------------------------------------------------------------- report


def _verdict(ok: bool) -> str:
    return "[green]PASS[/]" if ok else "[red]MISS[/]"


def _cell(d: dict[str, Any] | None, key: str, target: float, higher: bool) -> str:
    if d is None:
        return "—"
    if "error" in d:
        return "[red]error[/]"
    v = d[key]
    errs = sum(d["errors"].values())
    ok = (v >= target if higher else v <= target) and not errs
    text = f"{v:,.0f}/s" if higher else f"{v:,.1f} ms"
    if errs:
        text += f" [red]({errs:,} failed)[/]"
    return f"{text} {_verdict(ok)}"


def _lat(d: dict[str, Any] | None, unit: str = "ms") -> str:
    if d is None or "error" in d:
        return "—"
    return f"{d['p50_ms']:,.1f} / {d['p99_ms']:,.1f} {unit}"


def _targets(by_backend: dict[str, float]) -> str:
    """SQLite's target / PostgreSQL's."""
    return "≥ " + " / ".join(f"{v:,.0f}" for v in by_backend.values()) + "/s"


def _cpu(d: dict[str, Any] | None, key: str = "cpu_s_per_1000") -> str:
    if d is None or "error" in d or key not in d:
        return "—"
    return f"{d[key]:.2f} s"


def render(results: dict[str, dict[str, Any]], a: argparse.Namespace, notes: list[str],
           console: Any) -> None:  # fmt: skip
    from rich.table import Table

    backends = [b for b in ("SQLite", "PostgreSQL") if b in results]
    t = Table(
        title=f"duly API benchmark — `duly serve` over HTTP, {os.cpu_count()} CPUs, "
        f"{time.strftime('%Y-%m-%d %H:%M')}",
        title_justify="left",
    )
    t.add_column("row")
    t.add_column("target")
    for b in backends:
        t.add_column(b, justify="right")

    def get(b: str, k: str) -> dict[str, Any] | None:
        return results[b].get(k)

    if a.workers > 1:
        t.title = f"{t.title} — `duly serve --workers {a.workers}`"

    t.add_row(
        f"1 single upserts/s ({a.concurrency} in flight, {a.seconds:g} s)", _targets(TARGET_SINGLE),
        *[_cell(get(b, "single"), "per_s", TARGET_SINGLE[b], True) for b in backends],
    )  # fmt: skip
    t.add_row("  p50 / p99", "", *[_lat(get(b, "single")) for b in backends])
    t.add_row("  server CPU s per 1,000", "", *[_cpu(get(b, "single")) for b in backends])
    t.add_row("  + PostgreSQL backends / client", "",
              *[_cpu(get(b, "single"), "pg_cpu_s_per_1000") + " / "
                + _cpu(get(b, "single"), "client_cpu_s_per_1000") for b in backends])  # fmt: skip
    t.add_row(
        f"2 batch subjects/s ({BATCH:,}/call, {a.batches} calls)", _targets(TARGET_BATCH),
        *[_cell(get(b, "batch"), "per_s", TARGET_BATCH[b], True) for b in backends],
    )  # fmt: skip
    t.add_row("  p50 / p99 per call", "", *[_lat(get(b, "batch")) for b in backends])
    t.add_row("  server CPU s per 1,000", "", *[_cpu(get(b, "batch")) for b in backends])
    t.add_row(
        f"3 p99 single upsert at {OPEN_LOOP_RATE:g} req/s ({a.rate_seconds:g} s)",
        f"≤ {TARGET_P99_MS:g} ms",
        *[_cell(get(b, "rate"), "p99_ms", TARGET_P99_MS, False) for b in backends],
    )  # fmt: skip
    t.add_row(
        "  p50 / achieved rate", "",
        *[("—" if not get(b, "rate") or "error" in get(b, "rate") else  # type: ignore[operator]
           f"{get(b, 'rate')['p50_ms']:,.1f} ms / {get(b, 'rate')['per_s']:,.0f}/s")  # type: ignore[index]
          for b in backends],
    )  # fmt: skip
    console.print(t)
    for b in backends:
        r = results[b]
        if "single" in r and "error" not in r["single"] and "rate" in r:
            notes.append(
                f"{b}: server log: {r.get('server_errors', 0)} internal errors, "
                f"{r.get('database_locked', 0)} 'database is locked'; "
                f"max latency single {r['single']['max_ms']:,.0f} ms, "
                f"at {OPEN_LOOP_RATE:g}/s {r['rate']['max_ms']:,.0f} ms."
            )
        for k in ("single", "batch", "rate"):
            d = r.get(k)
            if d and d.get("errors"):
                notes.append(f"{b} {k}: failed requests: {d['errors']}")
    for line in notes:
        console.print(f"  • {line}", highlight=False)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="5 s windows, 5 batch calls")
    ap.add_argument("--seconds", type=float, help="closed-loop window (default 10 s)")
    ap.add_argument("--rate-seconds", type=float, help="fixed-rate window (default 10 s)")
    ap.add_argument("--batches", type=int, help="batch calls of 1,000 (default 10)")
    ap.add_argument("--concurrency", type=int, default=1,
                    help="single upserts in flight (1: one app client, the target case)")  # fmt: skip
    ap.add_argument("--postgres", default=os.environ.get("DULY_BENCH_POSTGRES", DEFAULT_PG),
                    help="PostgreSQL URL; its database is dropped and re-created "
                    "(env DULY_BENCH_POSTGRES; 'none' to skip)")  # fmt: skip
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="duly serve --workers N (HTTP processes; default 1: one process)",
    )
    ap.add_argument(
        "--only",
        default="single,batch,rate",
        help="rows to run, of single,batch,rate (default all)",
    )
    ap.add_argument(
        "--backends", default="sqlite,postgresql", help="of sqlite,postgresql (default both)"
    )
    ap.add_argument("--profile", action="store_true",
                    help="record py-spy flame graphs of the server into bench/out/")  # fmt: skip
    a = ap.parse_args(argv)
    a.seconds = a.seconds or (5.0 if a.quick else 10.0)
    a.rate_seconds = a.rate_seconds or (5.0 if a.quick else 10.0)
    a.batches = a.batches or (5 if a.quick else 10)
    a.only = {r.strip() for r in a.only.split(",") if r.strip()}
    wanted = {b.strip().lower() for b in a.backends.split(",")}

    started = time.time()
    load_before = os.getloadavg()[0]
    results: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="duly-bench-api-"))
    backends: list[Backend] = [SqliteBackend(root)] if "sqlite" in wanted else []
    try:
        if a.postgres.lower() != "none" and "postgresql" in wanted:
            pg = PostgresBackend(a.postgres)
            try:
                pg.check()
                backends.append(pg)
            except Exception as exc:  # no server: the column says so
                notes.append(f"PostgreSQL skipped: {type(exc).__name__}: {exc}")
        for b in backends:
            log(f"--- {b.name}")
            try:
                results[b.name] = measure(b, root, a)
            except Exception as exc:
                traceback.print_exc()
                results[b.name] = {k: {"error": repr(exc)} for k in ("single", "batch", "rate")}
                notes.append(f"{b.name}: {type(exc).__name__}: {exc}")
    finally:
        for b in backends:
            try:
                b.close()
            except Exception:
                traceback.print_exc()
        shutil.rmtree(root, ignore_errors=True)
        _reap_all()

    notes.append(
        f"Total run time {time.time() - started:.0f} s; 1-minute load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (other work on the machine "
        "skews every figure)."
    )
    console = report_console()
    render(results, a, notes, console)
    save_report(console, "api", {"args": vars(a), "results": results, "notes": notes})
    failed = any("error" in d for r in results.values() for d in r.values() if isinstance(d, dict))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
