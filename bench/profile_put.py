"""Where one ``PUT /v1/subjects/{kind}/{key}`` spends its CPU, in-process and deterministic.

    .venv/bin/python bench/profile_put.py                    # SQLite, 2,000 upserts
    .venv/bin/python bench/profile_put.py --postgres URL     # a scratch PostgreSQL database
    .venv/bin/python bench/profile_put.py --profile 30       # + cProfile's top 30 (cumulative)
    .venv/bin/python bench/profile_put.py --batch            # POST /v1/subjects:batch of 1,000
    .venv/bin/python bench/profile_put.py --keys 50          # repeats: 50 subjects again and again
    .venv/bin/python bench/profile_put.py --http h11 --loop asyncio   # through uvicorn, below

The app is the one ``duly serve`` runs (``create_app`` over ``build_runtime``, the web UI
included, behind ``ClientAddress``), called as ASGI without an HTTP server, so the figures are
duly's own: validation, routing, the engine, SQL and JSON, with the statements per upsert
counted. The dispatcher is not started (``bench/api.py`` measures ``duly serve`` whole, over
HTTP). With ``--http`` (``h11`` or ``httptools``) and ``--loop`` (``asyncio`` or ``uvloop``) the
same app runs under uvicorn in a child process, driven over one keep-alive connection from
this one, and the child's CPU is what is counted: the HTTP server's share, still without the
dispatcher's. It prints the process's CPU seconds per 1,000 upserts (user + system, this process;
with ``--postgres`` the server's backend CPU is added from ``/proc``) and statements per
upsert. A shared, loaded machine slows the wall clock, much less the CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api import RULES, TEMPLATE, pg_backend_cpu  # noqa: E402

RECIPIENTS = 200


def _pg_backend_cpu(url: str) -> float:
    """CPU seconds of the PostgreSQL backends serving the scratch database (from /proc)."""
    return sum(pg_backend_cpu(url).values())


class Asgi:
    """Calls an ASGI app with one HTTP request at a time, as uvicorn would."""

    def __init__(self, app: Any, key: str) -> None:
        self.app = app
        self.headers = [
            (b"host", b"127.0.0.1:8000"),
            (b"authorization", f"Bearer {key}".encode()),
            (b"content-type", b"application/json"),
        ]

    async def request(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [*self.headers, (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        sent = False
        status = 0
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(msg: dict[str, Any]) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            elif msg["type"] == "http.response.body":
                chunks.append(msg.get("body", b""))

        await self.app(scope, receive, send)
        return status, b"".join(chunks)


def build(root: Path, database: str) -> tuple[Any, Any, str]:
    from duly.api.keys import KeyStore
    from duly.app import create_app
    from duly.core.rules.loader import load_rules
    from duly.engine.runtime import build_runtime
    from duly.web import ClientAddress

    (root / "templates").mkdir(exist_ok=True)
    (root / "templates" / "bench.email.txt").write_text(TEMPLATE)
    (root / "duly.yaml").write_text(RULES)
    rt = build_runtime(load_rules(root / "duly.yaml"), database, send_workers=1)
    key, _ = KeyStore(rt.db).create("bench", datetime.now(UTC))
    app = ClientAddress(create_app(rt), "127.0.0.1,::1")
    import gc

    gc.collect()  # as `duly serve` does once started
    gc.freeze()
    return rt, app, key


def count_statements(db: Any) -> list[int]:
    from sqlalchemy import event

    n = [0]

    def on(*a: Any, **k: Any) -> None:
        n[0] += 1

    event.listen(db, "before_cursor_execute", on)
    return n


async def run(args: argparse.Namespace, app: Any, key: str, rt: Any) -> None:
    client = Asgi(app, key)
    due = (datetime.now(UTC) + timedelta(days=30)).isoformat()

    def body(i: int) -> dict[str, Any]:
        return {
            "attributes": {"status": "open", "due_at": due},
            "recipients": {"owner": f"u{i % RECIPIENTS}"},
        }

    # recipients first (the rule's "owner" role), then warm up
    for r in range(RECIPIENTS):
        st, out = await client.request(
            "PUT", f"/v1/recipients/u{r}",
            json.dumps({"name": f"U{r}", "email": f"u{r}@example.com"}).encode(),
        )  # fmt: skip
        assert st in (200, 201), (st, out)
    seq = [0]

    async def one_put() -> None:
        i = seq[0]
        seq[0] += 1
        if args.keys:  # the same subjects again: the plan unchanged, a new revision
            i %= args.keys
        st, out = await client.request(
            "PUT", f"/v1/subjects/job/k{i}", json.dumps(body(i)).encode()
        )
        assert st == 200, (st, out[:300])

    async def one_batch() -> None:
        items = []
        for _ in range(1000):
            i = seq[0]
            seq[0] += 1
            items.append({"kind": "job", "key": f"k{i}", **body(i)})
        st, out = await client.request(
            "POST", "/v1/subjects:batch", json.dumps({"subjects": items}).encode()
        )
        assert st == 200, (st, out[:300])

    op = one_batch if args.batch else one_put
    per = 1000 if args.batch else 1
    for _ in range(2 if args.batch else 50):
        await op()
    stmts = count_statements(rt.db)
    calls = args.n // per
    pg0 = _pg_backend_cpu(args.postgres) if args.postgres else 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    # CPU time, not wall time: waits for PostgreSQL (or for a core, on a loaded machine)
    # are not this process's work
    prof = cProfile.Profile(time.process_time) if args.profile else None
    if prof:
        # cProfile sees one thread: run the handler's thread-pool work on the event loop
        import duly.api.v1.subjects as subjects_api

        async def inline(fn: Any, *a: Any, **k: Any) -> Any:
            return fn(*a, **k)

        subjects_api.run_in_threadpool = inline  # type: ignore[assignment]
        import fastapi.routing

        import duly.api.fastput

        fastapi.routing.run_in_threadpool = inline  # type: ignore[assignment]
        duly.api.fastput.run_in_threadpool = inline  # type: ignore[assignment]
    if prof:
        prof.enable()
    for _ in range(calls):
        await op()
    if prof:
        prof.disable()
    cpu = time.process_time() - c0
    wall = time.perf_counter() - t0
    pg = (_pg_backend_cpu(args.postgres) - pg0) if args.postgres else 0.0
    n = calls * per
    what = "batch (1,000 per call)" if args.batch else "single PUT"
    print(
        f"{what}: {n} subjects; CPU per 1,000: duly {cpu / n * 1000:.3f} s"
        + (f" + PostgreSQL {pg / n * 1000:.3f} s" if args.postgres else "")
        + f"; wall {n / wall:,.0f}/s; statements per call {stmts[0] / calls:.1f}"
        + (" (profiled: CPU inflated)" if prof else "")
    )
    if prof and args.profile_out:
        prof.dump_stats(args.profile_out)
    if prof:
        st = pstats.Stats(prof)
        st.sort_stats("cumulative").print_stats(args.profile)
        st.sort_stats("tottime").print_stats(args.profile)


def serve_child(database: str, root: Path, port: int, loop: str, http: str) -> None:
    """The child of ``--http``: the app under uvicorn, the key on stdout."""
    import uvicorn

    rt, app, key = build(root, database)
    print(key, flush=True)
    uvicorn.run(app, host="127.0.0.1", port=port, loop=loop, http=http, log_level="warning",
                access_log=False, proxy_headers=False)  # fmt: skip
    rt.stop()


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def over_http(args: argparse.Namespace, root: Path, database: str) -> None:
    import subprocess

    from _harness import free_port
    from api import Conn, Server

    port = free_port()
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", database, str(root), str(port), args.loop,
         args.http],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        key = child.stdout.readline().strip()

        async def drive() -> tuple[float, float, float]:
            srv = Server(f"http://127.0.0.1:{port}", "127.0.0.1", port, key, child, root)  # type: ignore[arg-type]
            for _ in range(100):
                try:
                    conn = Conn(srv)
                    await conn.request("GET", "/readyz")
                    break
                except OSError:
                    await asyncio.sleep(0.2)
            for r in range(RECIPIENTS):
                await conn.request("PUT", f"/v1/recipients/u{r}", json.dumps(
                    {"name": f"U{r}", "email": f"u{r}@example.com"}).encode())  # fmt: skip
            due = (datetime.now(UTC) + timedelta(days=30)).isoformat()

            async def put(i: int) -> None:
                b = {"attributes": {"status": "open", "due_at": due},
                     "recipients": {"owner": f"u{i % RECIPIENTS}"}}  # fmt: skip
                st, out = await conn.request(
                    "PUT", f"/v1/subjects/job/k{i}", json.dumps(b).encode()
                )
                assert st == 200, (st, out[:300])

            for i in range(50):
                await put(i)
            c0, t0 = _proc_cpu(child.pid), time.perf_counter()
            for i in range(50, 50 + args.n):
                await put(i)
            return _proc_cpu(child.pid) - c0, time.perf_counter() - t0, float(args.n)

        cpu, wall, n = asyncio.run(drive())
        print(
            f"single PUT over uvicorn (--loop {args.loop} --http {args.http}): {int(n)} subjects;"
            f" server CPU per 1,000: {cpu / n * 1000:.3f} s; wall {n / wall:,.0f}/s"
        )
    finally:
        child.terminate()
        child.wait(30)


def _without_fast_put() -> None:
    """Every PUT through FastAPI's generic route (to compare with duly.api.fastput)."""
    from duly.api.fastput import FastPut

    async def through(self: Any, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    FastPut.__call__ = through  # type: ignore[method-assign]


def main() -> None:
    if os.environ.get("DULY_BENCH_NO_FAST_PUT"):
        _without_fast_put()
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, database, root, port, loop, http = sys.argv
        serve_child(database, Path(root), int(port), loop, http)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--postgres", default=None, help="a scratch database URL (created here)")
    ap.add_argument("--profile", type=int, default=0, metavar="LINES")
    ap.add_argument("--profile-out", default=None, metavar="FILE",
                    help="with --profile: also write the raw cProfile stats to FILE")  # fmt: skip
    ap.add_argument("--keys", type=int, default=0, metavar="N",
                    help="single PUTs cycle over N subjects (repeats) instead of new ones")  # fmt: skip
    ap.add_argument("--batch", action="store_true")
    ap.add_argument("--no-fast-put", action="store_true",
                    help="through FastAPI's generic route (duly.api.fastput off)")  # fmt: skip
    ap.add_argument("--http", choices=("h11", "httptools"), default=None)
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = ap.parse_args()
    if args.no_fast_put:
        os.environ["DULY_BENCH_NO_FAST_PUT"] = "1"  # the --http child too
        _without_fast_put()
    if args.batch and args.n < 1000:
        args.n = 1000
    with tempfile.TemporaryDirectory(prefix="duly-prof-") as tmp:
        root = Path(tmp)
        if args.postgres:
            from _harness import ScratchPostgres

            scratch = ScratchPostgres(args.postgres, default="duly_bench_prof")
            database = scratch.create()
            args.postgres = database
        else:
            scratch = None
            database = f"sqlite:///{root / 'prof.db'}"
        try:
            if args.http:
                over_http(args, root, database)
                return
            rt, app, key = build(root, database)
            try:
                asyncio.run(run(args, app, key, rt))
            finally:
                rt.stop()
        finally:
            if scratch is not None:
                scratch.close()


if __name__ == "__main__":
    main()
