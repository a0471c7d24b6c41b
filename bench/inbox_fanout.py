"""Inbox SSE fan-out, measured with a light client: N streams to a real `duly serve`
(SQLite), one reminder to all their recipients on the ``inbox`` channel; latency from each
delivery's ``sent_at`` to the client reading its event.

    .venv/bin/python bench/inbox_fanout.py [--streams 1000] [--clients 2]

bench/inbox_sse.py reads the streams with httpx in one event loop; at 1,000 streams that
client's own CPU (parsing 1,000 responses line by line) is part of what it measures. Here
each stream is a plain asyncio socket reading raw bytes, spread over ``--clients``
processes, so the figure is the server's fan-out. Setup calls use httpx.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from inbox_sse import inbox_server  # noqa: E402


async def one(host: str, port: int, key: str, rid: str, ready: asyncio.Event) -> tuple[float, str]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"GET /v1/recipients/{rid}/inbox/stream HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    buf = b""
    try:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
            if not ready.is_set() and b": connected" in buf:
                ready.set()
            i = buf.find(b"\ndata: ")
            if i >= 0 and b"\n\n" in buf[i:]:
                at = time.time()
                line = buf[i + 7 :].split(b"\n", 1)[0]
                data = line.split(b"\r\n", 1)[-1] if b"\r\n" in line else line
                return at, json.loads(data)["sent_at"]
    finally:
        writer.close()


def client(
    url: str, key: str, rids: list[str], ready_q: mp.Queue, go: mp.Event, out: mp.Queue
) -> None:
    u = urlsplit(url)

    async def main() -> None:
        readies = [asyncio.Event() for _ in rids]
        tasks = [
            asyncio.create_task(one(u.hostname or "127.0.0.1", u.port or 80, key, r, e))
            for r, e in zip(rids, readies, strict=True)
        ]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in readies)), 60)
        ready_q.put(len(rids))
        done, pending = await asyncio.wait(tasks, timeout=40)
        for t in pending:
            t.cancel()
        res = []
        for t in done:
            if t.exception() is None:
                recv, sent = t.result()
                res.append((recv - datetime.fromisoformat(sent).timestamp()) * 1000)
        out.put(res)

    asyncio.run(main())


def run(url: str, key: str, n: int, clients: int) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    rids = [f"r{i:05d}" for i in range(n)]
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        for r in rids:
            http.put(f"/v1/recipients/{r}", json={"name": r}).raise_for_status()
        ready_q: mp.Queue = mp.Queue()
        out: mp.Queue = mp.Queue()
        go = mp.Event()
        procs = [
            mp.Process(target=client, args=(url, key, rids[i::clients], ready_q, go, out))
            for i in range(clients)
        ]
        t0 = time.monotonic()
        for p in procs:
            p.start()
        for _ in procs:
            ready_q.get(timeout=90)
        print(f"{n} streams open in {time.monotonic() - t0:.2f}s (load {os.getloadavg()[0]:.1f})")
        body = {
            "title": "Bench",
            "message": "fan-out",
            "recipients": rids,
            "send_at": (datetime.now(UTC) + timedelta(seconds=1)).isoformat(),
            "channels": ["inbox"],
        }
        http.post("/v1/reminders", json=body).raise_for_status()
        lat = sorted(x for _ in procs for x in out.get(timeout=60))
        for p in procs:
            p.join(10)
    print(f"received {len(lat)}/{n} (load {os.getloadavg()[0]:.1f})")
    if len(lat) > 1:
        p = statistics.quantiles(lat, n=100)
        print(f"sent_at -> receipt: p50 {p[49]:.0f} ms  p99 {p[98]:.0f} ms  max {lat[-1]:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=2)
    args = ap.parse_args()
    with inbox_server(args.streams) as live:
        run(live.url, live.key, args.streams, args.clients)


if __name__ == "__main__":
    main()
