"""Inbox SSE fan-out: N connected streams to a real `duly serve` (SQLite), one reminder to
all of their recipients on the ``inbox`` channel, latency from each delivery's ``sent_at`` to
the event's receipt by the client.

    .venv/bin/python bench/inbox_sse.py [--streams 1000]

Stops by itself (60 s at most). Figures on the development container (one `duly serve`
process, SQLite, client and server on the same machine):

    --streams 1000: 1000 streams open in 11.6 s; received 1000/1000;
                    sent_at -> receipt p50 1396 ms, p99 2346 ms, max 2347 ms
    --streams 100:  100 streams open in 1.1 s; received 100/100;
                    sent_at -> receipt p50 80 ms, p99 100 ms

At 1,000 the time goes on the dispatcher's side, not the stream's: the 1,000 deliveries of
one reminder are claimed and sent in batches (``sent_at`` is stamped when each is sent, the
outcomes are committed per batch, and only then does on_outcome wake the notifier), then
1,000 events are serialized on one event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from live import live_server  # noqa: E402

RULES = "rules:\n  - {name: notice, subject: notice, on: notice.posted, to: [reader], channels: [inbox]}\n"


async def stream(
    client: httpx.AsyncClient, rid: str, ready: asyncio.Event, got: dict[str, tuple[float, str]]
) -> None:
    async with client.stream("GET", f"/v1/recipients/{rid}/inbox/stream") as r:
        async for line in r.aiter_lines():
            if line.startswith(": connected"):
                ready.set()
            elif line.startswith("data:"):
                got[rid] = (time.time(), json.loads(line[5:])["sent_at"])
                return


async def run(url: str, key: str, n: int) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=n + 50, max_keepalive_connections=n + 50)
    timeout = httpx.Timeout(30, read=60)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=timeout
    ) as client:
        rids = [f"r{i:05d}" for i in range(n)]
        sem = asyncio.Semaphore(50)

        async def put(rid: str) -> None:
            async with sem:
                (await client.put(f"/v1/recipients/{rid}", json={"name": rid})).raise_for_status()

        await asyncio.gather(*(put(r) for r in rids))
        got: dict[str, tuple[float, str]] = {}
        readies = [asyncio.Event() for _ in rids]
        t0 = time.monotonic()
        tasks = [
            asyncio.create_task(stream(client, r, e, got))
            for r, e in zip(rids, readies, strict=True)
        ]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in readies)), 60)
        print(f"{n} streams open in {time.monotonic() - t0:.2f}s")
        body = {
            "title": "Bench",
            "message": "fan-out",
            "recipients": rids,
            "send_at": (datetime.now(UTC) + timedelta(seconds=1)).isoformat(),
            "channels": ["inbox"],
        }
        (await client.post("/v1/reminders", json=body)).raise_for_status()
        done, pending = await asyncio.wait(tasks, timeout=30)
        for t in pending:
            t.cancel()
        lat = sorted(
            (recv - datetime.fromisoformat(sent).timestamp()) * 1000 for recv, sent in got.values()
        )
        print(f"received {len(lat)}/{n}")
        if lat:
            p = statistics.quantiles(lat, n=100) if len(lat) > 1 else [lat[0]] * 99
            print(
                f"sent_at -> receipt: p50 {p[49]:.0f} ms  p99 {p[98]:.0f} ms  max {lat[-1]:.0f} ms"
            )


@contextmanager
def inbox_server(streams: int) -> Iterator[Any]:
    """A real ``duly serve`` (SQLite) with the ``notice`` rule on the inbox channel, and
    enough file descriptors for ``streams`` streams (also bench/inbox_fanout.py's)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * streams)), hard))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "duly.yaml").write_text(RULES)
        (Path(tmp) / "templates").mkdir()
        (Path(tmp) / "templates" / "notice.inbox.txt").write_text("Subject: n\nx\n")
        with live_server(Path(tmp), rules=Path(tmp) / "duly.yaml") as live:
            yield live


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=1000)
    args = ap.parse_args()
    with inbox_server(args.streams) as live:
        asyncio.run(asyncio.wait_for(run(live.url, live.key, args.streams), 60))


if __name__ == "__main__":
    main()
