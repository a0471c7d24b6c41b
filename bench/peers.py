"""duly beside its peers, in one run, on one workload shape.

    .venv/bin/python bench/peers.py --quick                       # ~4-5 min, every system
    .venv/bin/python bench/peers.py                               # N = 20,000, 60 s lateness
    .venv/bin/python bench/peers.py --systems duly,celery --quick

Systems: ``duly`` (``duly serve`` on SQLite; ``duly serve`` + one ``duly worker`` on
PostgreSQL, driven over its HTTP API by a keep-alive client), and the peers, each run from a
virtualenv of its own made here on first use (``bench/.venvs/NAME``, git-ignored) by
``bench/_peer_drivers.py``: ``celery`` (Celery 5.7 + Redis, ``apply_async(eta=)``, prefork
``-c 2``), ``huey`` (``SqliteHuey``, ``schedule(eta=)``, a consumer), ``procrastinate``
(PostgreSQL, ``defer(schedule_at=)``, a worker) and ``apscheduler`` (3.x,
``BackgroundScheduler``, ``SQLAlchemyJobStore`` on SQLite, ``add_job(trigger='date')``).

Rows, the same for every system (reminder i due at T0 + W·i/N, one call each from one loop):

1. schedule      N reminders due a day ahead (W = 1 h): calls/s
2. drain         ``--drain`` reminders all due at T0: executed / (last execution - T0),
                 from the system's own record (duly: ``deliveries.sent_at`` of the outbox
                 channel; peers: a task appending ``(time, id)`` to a file)
3. lateness      83/s for ``--window`` s: execution - due, p50 / p99 ms
4. peak RSS      of the system's processes, summed (not the database server)
5. CPU           seconds per 1,000 reminders: the system's processes + the database server's
                 (PostgreSQL backends of the scratch database, ``redis-server``) + the client
                 loop, over rows 1-3

duly only (``--duly-extras``): single upserts on SQLite and PostgreSQL (row 1), 8 concurrent
clients on PostgreSQL (against one ``duly serve`` process, then ``duly serve --workers 2``),
with the server side's CPU per 1,000, batch upserts (``POST /v1/subjects:batch``, 1,000 per call; duly's
drain is seeded this way), and the drain through ``duly serve`` + 1, 2 and 4 workers on
PostgreSQL. The table goes to stdout (progress to stderr) and, with the raw figures, to
``bench/out/peers-*.txt|json``. Every database, file and process made here is gone at exit.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from duly.store.tables import deliveries

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _harness import (  # noqa: E402
    DulyProc,
    ScratchPostgres,
    duly_env,
    free_port,
    log,
    migrate_and_key,
    reap,
    remove_sqlite,
    report_console,
    save_report,
    spawn,
)
from _peerkit import FAR_S, RATE, WINDOW_FAR_S, Sampler, pct, server_pids  # noqa: E402

PEERS = {  # name -> what its virtualenv needs
    "celery": ["celery[redis]>=5.7,<5.8"],
    "huey": ["huey"],
    "procrastinate": ["procrastinate", "psycopg[binary]"],
    "apscheduler": ["apscheduler>=3.10,<4", "sqlalchemy"],
}
SYSTEMS = ["duly", *PEERS]
DEFAULT_PG = "postgresql+psycopg://root@127.0.0.1:5432/postgres"
VENVS = HERE / ".venvs"
BATCH = 1_000

RULES = """
timezone: UTC
channels:
  outbox: {type: outbox}
rules:
  - name: remind
    subject: reminder
    to: [owner]
    channels: [outbox]
    template: remind
    at: "remind_at"
"""
TEMPLATE = "Reminder {{ subject.key }} for {{ recipient.name }}\n"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


# --------------------------------------------------------------------------- duly's client


class Client:
    """One keep-alive HTTP/1.1 connection to ``duly serve``."""

    def __init__(self, port: int, key: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: Any) -> Any:
        raw = json.dumps(body).encode()
        try:
            self.conn.request(method, path, raw, self.headers)
            r = self.conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # the server closes a connection idle past its keep-alive timeout: open another
            # (every call here is an idempotent upsert)
            self.conn.close()
            self.conn.request(method, path, raw, self.headers)
            r = self.conn.getresponse()
        data = r.read()
        if r.status not in (200, 201):
            raise RuntimeError(f"{method} {path}: {r.status} {data[:300]!r}")
        return data

    def remind(self, key: str, at: float) -> None:
        body = {"attributes": {"remind_at": _iso(at)}, "recipients": {"owner": "r0"}}
        self.call("PUT", f"/v1/subjects/reminder/{key}", body)

    def batch(self, items: list[tuple[str, float]]) -> None:
        subjects = [
            {"kind": "reminder", "key": k, "attributes": {"remind_at": _iso(at)},
             "recipients": {"owner": "r0"}}
            for k, at in items
        ]  # fmt: skip
        self.call("POST", "/v1/subjects:batch", {"subjects": subjects})

    def close(self) -> None:
        self.conn.close()


class Duly:
    """``duly serve`` (+ ``workers`` × ``duly worker``) on a fresh database."""

    def __init__(self, backend: str, a: argparse.Namespace, root: Path, workers: int) -> None:
        self.backend, self.root = backend, root
        root.mkdir(parents=True)
        (root / "templates").mkdir()
        (root / "templates" / "remind.outbox.txt").write_text(TEMPLATE)
        (root / "duly.yaml").write_text(RULES)
        self.pg: ScratchPostgres | None = None
        if backend == "sqlite":
            self.url = f"sqlite:///{root / 'duly.db'}"
        else:
            self.pg = ScratchPostgres(a.postgres, dbname=f"duly_peers_{os.getpid()}")
            self.url = self.pg.create()
        self.env = env = duly_env(self.url, root / "duly.yaml")
        self.serve = DulyProc("serve", "serve", env, root, port=free_port())
        self.workers: list[DulyProc] = []
        self.failures: dict[str, int] = {}  # prefix -> deliveries failed
        self.db = sa.create_engine(self.url)
        try:
            self.key = migrate_and_key(env, root)
            self.serve.start()
            self.add_workers(workers)
            self.serve.wait_http(90, path="/readyz")
            c = Client(self.port, self.key)
            c.call("PUT", "/v1/recipients/r0", {"name": "Bench", "email": "r0@bench.test"})
            c.close()
        except BaseException:
            self.close()  # the processes stopped, the scratch database dropped
            raise

    @property
    def port(self) -> int:
        assert self.serve.port is not None
        return self.serve.port

    def add_workers(self, k: int) -> None:
        for _ in range(k):
            w = DulyProc("worker", f"worker{len(self.workers) + 1}", self.env, self.root)
            w.start()
            self.workers.append(w)

    def restart_serve(self, args: list[str]) -> None:
        """Stop ``duly serve`` and start it again with ``args`` (same port and database)."""
        self.serve.stop(30)
        self.serve.args = args
        self.serve.start()
        self.serve.wait_http(90, path="/readyz")

    def pids(self) -> list[int]:
        return [p.pid for p in (self.serve, *self.workers) if p.pid]

    def servers(self) -> list[int]:
        return server_pids(pg_database=self.pg.dbname) if self.pg else []

    def sent(self, prefix: str) -> list[tuple[str, datetime]]:
        q = sa.select(deliveries.c.subject, deliveries.c.sent_at).where(
            deliveries.c.subject.like(f"reminder/{prefix}%"), deliveries.c.state == "sent"
        )
        with self.db.connect() as c:
            return [(s.split("/", 1)[1], t) for s, t in c.execute(q)]

    def failed(self, prefix: str) -> int:
        q = sa.select(sa.func.count()).where(
            deliveries.c.subject.like(f"reminder/{prefix}%"), deliveries.c.state == "failed"
        )
        with self.db.connect() as c:
            return int(c.execute(q).scalar_one())

    def wait_sent(self, prefix: str, n: int, deadline: float) -> list[tuple[str, float]]:
        """Until ``n`` reminders of ``prefix`` are sent or failed (``self.failures``)."""
        while True:
            got = self.sent(prefix)
            self.failures[prefix] = failed = self.failed(prefix)
            if len(got) + failed >= n or time.time() > deadline:
                return [(k, t.timestamp()) for k, t in got]
            if not all(p.alive() for p in (self.serve, *self.workers)):
                raise RuntimeError("a duly process died:\n" + self.serve.log_text()[-2000:])
            time.sleep(0.25)

    def close(self) -> None:
        for p in (*self.workers, self.serve):
            p.stop(30)
        self.db.dispose()
        if self.pg is not None:
            self.pg.close()
        else:
            remove_sqlite(self.root / "duly.db")


def _seed(d: Duly, prefix: str, n: int, at: float) -> None:
    c = Client(d.port, d.key)
    for s in range(0, n, BATCH):
        c.batch([(f"{prefix}{i}", at) for i in range(s, min(n, s + BATCH))])
    c.close()


def _drain(d: Duly, prefix: str, n: int, batch_rate: float) -> dict[str, Any]:
    t0 = time.time() + 3 + 1.5 * n / batch_rate
    _seed(d, prefix, n, t0)
    done = time.time()
    got = d.wait_sent(prefix, n, t0 + max(120.0, n / 20))
    last = max((t for _, t in got), default=float("nan"))
    return {
        "n": n, "executed": len(got), "failed": d.failures.get(prefix, 0), "seconds": last - t0,
        "per_s": len(got) / (last - t0) if got and last > t0 else float("nan"),
        "scheduled_before_due_s": t0 - done,
        "first_after_due_s": min((t for _, t in got), default=float("nan")) - t0,
    }  # fmt: skip


def _concurrent(d: Duly, clients: int, seconds: float) -> dict[str, Any]:
    counts = [0] * clients
    lat: list[float] = []
    stop = time.perf_counter() + seconds
    far = time.time() + FAR_S

    def loop(k: int) -> None:
        c = Client(d.port, d.key)
        while time.perf_counter() < stop:
            t = time.perf_counter()
            c.remind(f"c{k}_{counts[k]}", far)
            lat.append((time.perf_counter() - t) * 1000)
            counts[k] += 1
        c.close()

    sampler = Sampler(d.pids, d.servers).start()
    t = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(k,)) for k in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    secs = time.perf_counter() - t
    st = sampler.stop()
    n = sum(counts)
    return {"clients": clients, "n": n, "seconds": secs, "per_s": n / secs,
            "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
            "cpu_duly_per_1000_s": 1000 * st["cpu_system_s"] / max(n, 1),
            "cpu_server_per_1000_s": 1000 * st["cpu_server_s"] / max(n, 1)}  # fmt: skip


def run_duly(backend: str, a: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The workload on duly (SQLite: serve; PostgreSQL: serve + 1 worker), then the
    duly-only rows of that backend."""
    d = Duly(backend, a, work / f"duly-{backend}", workers=1 if backend == "postgresql" else 0)
    out: dict[str, Any] = {"system": f"duly-{backend}"}
    name = f"duly {backend}"
    try:
        sampler = Sampler(d.pids, d.servers).start()
        ru0 = os.times()
        c = Client(d.port, d.key)
        base = time.time() + FAR_S
        t = time.perf_counter()
        for i in range(a.n):
            c.remind(f"s{i}", base + WINDOW_FAR_S * i / a.n)
        secs = time.perf_counter() - t
        rate = a.n / secs
        out["schedule"] = {"n": a.n, "seconds": secs, "per_s": rate}
        log(f"[{name}] schedule {rate:,.0f}/s")

        # batch upserts (duly only): far-future, 1,000 per call
        t = time.perf_counter()
        for b in range(a.batches):
            c.batch([(f"b{b}_{i}", base + WINDOW_FAR_S * i / BATCH) for i in range(BATCH)])
        secs = time.perf_counter() - t
        out["batch"] = {"calls": a.batches, "n": a.batches * BATCH, "seconds": secs,
                        "per_s": a.batches * BATCH / secs}  # fmt: skip
        log(f"[{name}] batch {out['batch']['per_s']:,.0f} subjects/s")

        out["drain"] = _drain(d, "d", a.drain, out["batch"]["per_s"])
        log(f"[{name}] drain {out['drain']['per_s']:,.0f}/s")

        n = int(RATE * a.window)
        t0 = time.time() + 3 + 1.5 * n / rate
        due = {f"l{i}": t0 + i / RATE for i in range(n)}
        for k, at in due.items():
            c.remind(k, at)
        c.close()
        got = d.wait_sent("l", n, t0 + a.window + 30)
        late = [(t - due[k]) * 1000 for k, t in got if k in due]
        out["lateness"] = {
            "rate": RATE, "window_s": a.window, "planned": n, "ran": len(got),
            "failed": d.failures.get("l", 0),
            "p50_ms": pct(late, 50), "p99_ms": pct(late, 99), "max_ms": max(late, default=float("nan")),
        }  # fmt: skip
        log(f"[{name}] lateness p50 {out['lateness']['p50_ms']:.1f} ms, "
            f"p99 {out['lateness']['p99_ms']:.1f} ms")  # fmt: skip
        stats = sampler.stop()
        ru1 = os.times()
        client = (ru1.user + ru1.system) - (ru0.user + ru0.system)  # this process: the client
        out["resources"] = {**stats, "cpu_client_s": client,
                            "reminders": a.n + a.batches * BATCH + a.drain + n}  # fmt: skip

        if backend == "postgresql" and a.duly_extras:
            out["concurrent"] = _concurrent(d, 8, a.concurrent_seconds)
            log(f"[{name}] 8 clients {out['concurrent']['per_s']:,.0f}/s")
            # several API processes: the same 8 clients against `duly serve --workers 2`
            # (its main process runs the dispatcher, two processes answer HTTP)
            d.restart_serve(["--workers", "2"])
            out["concurrent_api2"] = _concurrent(d, 8, a.concurrent_seconds)
            log(f"[{name}] 8 clients, 2 API processes {out['concurrent_api2']['per_s']:,.0f}/s")
            d.restart_serve([])
            out["drain_workers"] = {"1": out["drain"]}
            for k in (2, 4):
                d.add_workers(k - len(d.workers))
                time.sleep(2.0)
                out["drain_workers"][str(k)] = _drain(d, f"w{k}_", a.drain, out["batch"]["per_s"])
                log(f"[{name}] drain, serve + {k} workers: "
                    f"{out['drain_workers'][str(k)]['per_s']:,.0f}/s")  # fmt: skip
        text = d.serve.log_text() + "".join(w.log_text() for w in d.workers)
        out["tracebacks"] = text.count("Traceback")
    finally:
        d.close()
    return out


# --------------------------------------------------------------------------- the peers


def ensure_venv(name: str) -> Path:
    """``bench/.venvs/NAME`` with the peer installed (made on first use); its Python."""
    py = VENVS / name / "bin" / "python"
    ok = VENVS / name / ".duly-bench-ok"
    if not ok.exists():
        log(f"making {VENVS / name} ({', '.join(PEERS[name])})")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENVS / name)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *PEERS[name]], check=True,
                       timeout=900)  # fmt: skip
        ok.write_text(" ".join(PEERS[name]) + "\n")
    return py


def run_peer(name: str, a: argparse.Namespace, work: Path) -> dict[str, Any]:
    py = ensure_venv(name)
    wdir = work / name
    wdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DULY_", "PEER_"))}
    env.update(PEER_SYSTEM=name, PEER_RECORD=str(wdir / "record.txt"),
               PEER_DB=str(wdir / f"{name}.db"), PEER_QUEUE=f"duly-peers-{os.getpid()}",
               PYTHONUNBUFFERED="1")  # fmt: skip
    pg = None
    if name == "procrastinate":
        pg = ScratchPostgres(a.postgres, dbname=f"duly_peers_proc_{os.getpid()}")
        url = sa.make_url(pg.create()).set(drivername="postgresql")
        env.update(PEER_PG=url.render_as_string(hide_password=False), PEER_PG_NAME=pg.dbname)
    try:
        cmd = [str(py), str(HERE / "_peer_drivers.py"), name, "--n", str(a.n),
               "--drain", str(a.drain), "--window", str(a.window), "--work", str(wdir)]  # fmt: skip
        p = spawn(cmd, env=env, cwd=HERE, stdout=subprocess.PIPE, text=True)
        try:
            stdout, _ = p.communicate(timeout=1800)
        finally:
            reap(p, 30)  # SIGTERM to its group: the driver stops its workers
        if p.returncode != 0:
            raise RuntimeError(f"{name} driver exited with {p.returncode}")
        return json.loads(stdout.strip().splitlines()[-1])
    finally:
        if pg is not None:
            pg.close()


# --------------------------------------------------------------------------- the table

ROWS = [  # key, label, how to read a result, higher is better
    ("schedule", "1 schedule, 1 call each /s", lambda r: r["schedule"]["per_s"], True),
    ("drain", "2 drain, {drain:,} at once /s", lambda r: r["drain"]["per_s"], True),
    ("lateness", "3 lateness 83/s × {window:g} s, p50/p99 ms",
     lambda r: r["lateness"]["p99_ms"], False),
    ("rss", "4 peak RSS (sum)",
     lambda r: r["resources"]["peak_rss_mb"], False),
    ("cpu", "5 CPU s / 1,000 reminders", lambda r: _cpu(r), False),
]  # fmt: skip


def _cpu(r: dict[str, Any]) -> float:
    x = r["resources"]
    return (x["cpu_system_s"] + x["cpu_server_s"] + x["cpu_client_s"]) / x["reminders"] * 1000


def _fmt(key: str, r: dict[str, Any], v: float) -> str:
    if key == "lateness":
        lat = r["lateness"]
        miss = "" if lat["ran"] == lat["planned"] else f" ({lat['ran']}/{lat['planned']} ran)"
        return f"{lat['p50_ms']:,.1f} / {lat['p99_ms']:,.1f}{miss}"
    if key == "rss":
        return f"{v:,.0f} MB"
    if key == "cpu":
        return f"{v:.2f} s"
    cut = ""
    if key == "drain" and r["drain"]["executed"] != r["drain"]["n"]:
        failed = r["drain"].get("failed", 0)
        cut = f" ({failed} failed)" if failed else " (partial)"
    return f"{v:,.0f}/s{cut}"


def render(results: dict[str, Any], errors: dict[str, str], a: argparse.Namespace,
           console: Any, when: float | None = None, load: Any = None) -> None:  # fmt: skip
    from rich.table import Table

    duly_cols = [k for k in ("duly-sqlite", "duly-postgresql") if k in results]
    peer_cols = [k for k in PEERS if k in results or k in errors]
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(when))
    load = load or os.getloadavg()  # at the end of the run
    table = Table(title=f"duly beside its peers — N = {a.n:,}, {os.cpu_count()} CPUs, "
                  f"load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}, {stamp}")  # fmt: skip
    table.add_column("row", no_wrap=True)
    for k in duly_cols:
        table.add_column(k.replace("-", " "), justify="right")
    for k in peer_cols:
        v = results.get(k, {}).get("version", "")
        table.add_column(f"{k} {v}".strip(), justify="right")
    table.add_column("best peer")
    for key, label, get, higher in ROWS:
        vals: dict[str, float] = {}
        for k in (*duly_cols, *peer_cols):
            if k in results:
                try:
                    vals[k] = get(results[k])
                except (KeyError, TypeError, ZeroDivisionError):
                    pass
        peers = {k: v for k, v in vals.items() if k in PEERS and v == v}
        best = (max if higher else min)(peers, key=peers.__getitem__) if peers else None
        cells = []
        for k in duly_cols:
            if k not in vals:
                cells.append("error")
                continue
            cell = _fmt(key, results[k], vals[k])
            if best is not None and peers[best]:
                cell += f" ×{vals[k] / peers[best]:.2f}"
            cells.append(cell)
        for k in peer_cols:
            cells.append(_fmt(key, results[k], vals[k]) if k in vals else "error")
        table.add_row(label.format(drain=a.drain, window=a.window), *cells, best or "—")
    console.print(table)
    console.print("×r = duly's figure ÷ the best peer's (best: highest rate; lowest p99, RSS, "
                  "CPU). Lateness ratio on p99. CPU: the system's processes + the database "
                  "server's + the client loop.")  # fmt: skip

    extra = Table(title="duly only")
    extra.add_column("row")
    extra.add_column("figure", justify="right")
    for k in duly_cols:
        r = results[k]
        extra.add_row(f"single upserts, 1 client, {k}", f"{r['schedule']['per_s']:,.0f}/s")
        extra.add_row(
            f"batch upserts, 1,000 per call, {k}", f"{r['batch']['per_s']:,.0f} subjects/s"
        )
    pgr = results.get("duly-postgresql", {})
    for key, what in (("concurrent", "1 API process"), ("concurrent_api2", "2 API processes")):
        if key in pgr:
            c = pgr[key]
            cpu = ""
            if "cpu_duly_per_1000_s" in c:
                cpu = (f"; CPU/1,000 {c['cpu_duly_per_1000_s']:.2f} s duly"
                       f" + {c['cpu_server_per_1000_s']:.2f} s PostgreSQL")  # fmt: skip
            extra.add_row(f"single upserts, 8 clients, {what}, duly-postgresql",
                          f"{c['per_s']:,.0f}/s (p50 {c['p50_ms']:.0f} / p99 {c['p99_ms']:.0f} ms{cpu})")  # fmt: skip
    for k, dr in pgr.get("drain_workers", {}).items():
        extra.add_row(f"drain {a.drain:,}, serve + {k} worker(s), duly-postgresql",
                      _fmt("drain", {"drain": dr}, dr["per_s"]))  # fmt: skip
    if duly_cols:
        console.print(extra)
    for k, e in errors.items():
        console.print(f"[red]{k}: {e}[/red]")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--systems", default=",".join(SYSTEMS), help="comma-separated: " + ",".join(SYSTEMS)
    )
    ap.add_argument("--quick", action="store_true", help="N = 1,500, drain 2,000, 10 s lateness")
    ap.add_argument("--n", type=int, help="reminders of the schedule row (20,000; quick 1,500)")
    ap.add_argument("--drain", type=int, help="reminders due at once (20,000; quick 2,000)")
    ap.add_argument("--window", type=float, help="lateness window, s (60; quick 10)")
    ap.add_argument("--duly-backends", default="sqlite,postgresql")
    ap.add_argument("--no-duly-extras", dest="duly_extras", action="store_false",
                    help="skip 8 clients and the 2/4-worker drains")  # fmt: skip
    ap.add_argument("--postgres", default=os.environ.get("DULY_BENCH_POSTGRES", DEFAULT_PG),
                    help="server for the scratch databases (trust auth)")  # fmt: skip
    ap.add_argument("--json", help="also write the raw figures to this file")
    ap.add_argument("--no-save", dest="save", action="store_false", help="nothing to bench/out/")
    ap.add_argument("--from-json", help="only draw the table of a saved report")
    a = ap.parse_args(argv)
    if a.from_json:
        data = json.loads(Path(a.from_json).read_text())
        a = argparse.Namespace(**data["args"])
        console = report_console()
        when = datetime.fromisoformat(data["started"]).timestamp() + data["seconds"]
        render(data["results"], data["errors"], a, console, when, data["loadavg_end"])
        return 0
    q = a.quick
    a.n = a.n or (1_500 if q else 20_000)
    a.drain = a.drain or (min(2_000, max(a.n, 200)) if q else 20_000)
    a.window = a.window or (10.0 if q else 60.0)
    a.batches = 2 if q else 10
    a.concurrent_seconds = 5.0 if q else 10.0
    systems = [s.strip() for s in a.systems.split(",") if s.strip()]
    bad = set(systems) - set(SYSTEMS)
    if bad:
        ap.error(f"unknown systems: {', '.join(sorted(bad))}")

    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    work = Path(tempfile.mkdtemp(prefix="duly-peers-"))
    t_start, load0 = time.time(), os.getloadavg()
    try:
        for s in systems:
            runs = [f"duly-{b}" for b in a.duly_backends.split(",") if b] if s == "duly" else [s]
            for name in runs:
                log(f"--- {name}")
                try:
                    if name.startswith("duly-"):
                        results[name] = run_duly(name[5:], a, work)
                    else:
                        results[name] = run_peer(name, a, work)
                except Exception as exc:  # one system failing must not lose the others
                    traceback.print_exc()
                    errors[name] = f"{type(exc).__name__}: {exc}"[:500]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    console = report_console()
    render(results, errors, a, console)
    data = {
        "args": dict(vars(a)), "results": results, "errors": errors,
        "cpus": os.cpu_count(), "loadavg_start": load0, "loadavg_end": os.getloadavg(),
        "started": datetime.fromtimestamp(t_start, UTC).isoformat(),
        "seconds": time.time() - t_start,
    }  # fmt: skip
    if a.save:
        save_report(console, "peers", data)
    if a.json:
        Path(a.json).write_text(json.dumps(data, indent=2, default=str))
    log(f"done in {time.time() - t_start:.0f} s; report in bench/out/peers-latest.*")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
