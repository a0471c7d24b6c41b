"""SQLite under concurrent writers: a real `duly serve`, four HTTP clients upserting at once
while its dispatcher sends what falls due to a real SMTP server.

The clients plan subjects whose one reminder is due a few seconds after each request, and
re-upsert a third of them with a moved due time (some before it was sent, some after). So
the API's write transactions (BEGIN IMMEDIATE) race each other and the dispatcher's claim
and record transactions the whole time. Two runs: each client with its own subjects, and
all clients on the same subjects (moves racing moves and claims of the same rows).

Asserted afterwards:

- no request failed: every answer is 200, none 5xx, and "database is locked" appears
  neither in a response nor in the server's log;
- nothing is left pending or sending, and every subject has exactly one delivery, sent;
- the SMTP server received each sent delivery exactly once (counted by its
  ``X-Duly-Delivery`` header and by Message-ID), and nothing else.

On PostgreSQL the same HTTP scenario doubled a delivery in 5 of 9 runs: a re-plan racing the
dispatcher. :func:`test_bug_a_replan_racing_a_send_sends_twice_on_postgres` replays that
interleaving deterministically in one process.
"""

from __future__ import annotations

import email
import email.policy
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller

from duly.core.clock import VirtualClock
from duly.core.model import Recipient
from duly.core.rules.loader import load_rules_text
from duly.delivery.channels.base import Message, Receipt
from duly.delivery.rendering import Renderer
from duly.engine.dispatch import Dispatcher
from duly.engine.service import Engine, SubjectInput
from duly.store.db import make_engine
from duly.store.tables import deliveries
from live import Live, free_port, live_server  # tests/ is on sys.path (conftest.py)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

CLIENTS = 4
SUBJECTS = 400  # in all, split between the clients
RECIPIENTS = 20
DUE_IN = (1.0, 4.0)  # seconds after the request, uniformly
REUPSERT_EVERY = 3  # every third subject is upserted again with a moved due time

RULES = """\
timezone: UTC
channels:
  email: {{type: smtp, url: "smtp://127.0.0.1:{port}", from: "duly@test.example"}}
rules:
  - name: job-due
    subject: job
    if: "status == 'open'"
    to: [owner]
    steps:
      - name: due
        at: "due_at"
"""
TEMPLATE = "Job {{ subject.key }} is due\n"


@dataclass
class Sink:
    """An aiosmtpd handler counting what it receives."""

    deliveries: Counter[str] = field(default_factory=Counter)  # X-Duly-Delivery → count
    message_ids: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = (envelope.original_content or envelope.content or b"").replace(b"\r\n", b"\n")
        msg = email.message_from_bytes(content, policy=email.policy.default)
        with self.lock:
            self.deliveries[str(msg["X-Duly-Delivery"])] += 1
            self.message_ids[str(msg["Message-ID"])] += 1
        return "250 OK"

    def total(self) -> int:
        with self.lock:
            return sum(self.deliveries.values())


@contextmanager
def smtp_sink() -> Iterator[tuple[Sink, int]]:
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield sink, port
    finally:
        controller.stop()


class ServerLog:
    """Drains the server's output (a full pipe would block it) and keeps it."""

    def __init__(self, live: Live) -> None:
        self.lines: deque[str] = deque(maxlen=20_000)
        self._thread = threading.Thread(target=self._drain, args=(live,), daemon=True)
        self._thread.start()

    def _drain(self, live: Live) -> None:
        try:
            for line in live.proc.stdout or ():
                self.lines.append(line.rstrip("\n"))
        except (ValueError, OSError):  # closed by live_server's shutdown
            pass

    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class Outcome:
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


def client(live: Live, keys: list[int], seed: int, out: Outcome, lock: threading.Lock) -> None:
    """Upsert ``keys`` one by one in a shuffled order, then re-upsert every
    REUPSERT_EVERY-th with a new due time: by then some were sent, some not."""
    rnd = random.Random(seed)
    headers = {"Authorization": f"Bearer {live.key}"}
    order = list(keys)
    rnd.shuffle(order)
    order += [k for k in keys if k % REUPSERT_EVERY == 0]
    with httpx.Client(base_url=live.url, headers=headers, timeout=60) as c:
        for k in order:
            due = datetime.now(UTC) + timedelta(seconds=rnd.uniform(*DUE_IN))
            body = {
                "attributes": {"status": "open", "due_at": due.isoformat()},
                "recipients": {"owner": f"r{k % RECIPIENTS}"},
            }
            t = time.perf_counter()
            try:
                r = c.put(f"/v1/subjects/job/J{k:05d}", json=body)
            except httpx.HTTPError as exc:
                with lock:
                    out.requests += 1
                    out.problems.append(f"J{k:05d}: {type(exc).__name__}: {exc}")
                continue
            took = time.perf_counter() - t
            with lock:
                out.requests += 1
                out.statuses[r.status_code] += 1
                out.latencies.append(took)
                if r.status_code != 200 or "locked" in r.text:
                    out.problems.append(f"J{k:05d}: {r.status_code} {r.text[:300]}")


def states(db: sa.Engine) -> Counter[str]:
    with db.connect() as conn:
        q = sa.select(deliveries.c.state, sa.func.count()).group_by(deliveries.c.state)
        return Counter({s: n for s, n in conn.execute(q)})


def test_concurrent_upserts_while_dispatching_on_sqlite(tmp_path: Path) -> None:
    """Each client its own subjects."""
    scenario(tmp_path, [list(range(n, SUBJECTS, CLIENTS)) for n in range(CLIENTS)], SUBJECTS)


def test_clients_racing_on_the_same_subjects_on_sqlite(tmp_path: Path) -> None:
    """Every client upserts every subject (in its own order): moves race each other and
    the dispatcher's claims of the same rows."""
    n = SUBJECTS // CLIENTS
    scenario(tmp_path, [list(range(n)) for _ in range(CLIENTS)], n)


def scenario(tmp_path: Path, keys: list[list[int]], subjects: int) -> None:
    with smtp_sink() as (sink, port):
        (tmp_path / "templates").mkdir()
        (tmp_path / "templates" / "job-due.email.txt").write_text(TEMPLATE)
        (tmp_path / "duly.yaml").write_text(RULES.format(port=port))
        with live_server(tmp_path, rules=tmp_path / "duly.yaml") as live:
            log = ServerLog(live)
            headers = {"Authorization": f"Bearer {live.key}"}
            for i in range(RECIPIENTS):
                r = httpx.put(
                    f"{live.url}/v1/recipients/r{i}",
                    json={"name": f"R {i}", "email": f"r{i}@test.example"},
                    headers=headers,
                )
                assert r.status_code in (200, 201), r.text

            out, lock = Outcome(), threading.Lock()
            started = time.monotonic()
            with ThreadPoolExecutor(len(keys)) as pool:
                futures = [
                    pool.submit(client, live, mine, seed, out, lock)
                    for seed, mine in enumerate(keys)
                ]
                for f in futures:
                    f.result()
            upserting = time.monotonic() - started

            db = make_engine(live.database)
            try:
                deadline = time.monotonic() + 60  # the last ones are due DUE_IN[1] s from now
                while True:
                    now_states = states(db)
                    busy = now_states["pending"] + now_states["sending"]
                    if not busy or time.monotonic() > deadline:
                        break
                    time.sleep(0.25)
                sent_ids = _sent_and_identity_check(db, subjects)
            finally:
                db.dispose()
            settle = time.monotonic() + 10  # the SMTP sink may lag the database by a send
            while sink.total() < len(sent_ids) and time.monotonic() < settle:
                time.sleep(0.1)
            server_log = log.text()

    lat = sorted(out.latencies)
    print(
        f"\n{out.requests} upserts by {len(keys)} clients in {upserting:.1f} s "
        f"({out.requests / upserting:.0f}/s), p50 {1000 * lat[len(lat) // 2]:.0f} ms, "
        f"p99 {1000 * lat[int(len(lat) * 0.99)]:.0f} ms; deliveries {dict(now_states)}; "
        f"SMTP received {sink.total()}"
    )
    assert not out.problems, f"{len(out.problems)} requests failed:\n" + "\n".join(
        out.problems[:20]
    )
    assert out.statuses == Counter({200: out.requests})
    assert "database is locked" not in server_log, server_log[-5000:]
    assert "internal error" not in server_log, server_log[-5000:]

    assert not busy, f"left unsent after 60 s: {dict(now_states)}"
    assert now_states == Counter({"sent": subjects}), dict(now_states)

    doubled = {k: n for k, n in sink.deliveries.items() if n > 1}
    assert not doubled, f"received more than once: {doubled}"
    assert set(sink.deliveries) == {str(i) for i in sent_ids}, (
        f"sent but not received: {sorted(set(map(str, sent_ids)) - set(sink.deliveries))[:20]}; "
        f"received but not sent: {sorted(set(sink.deliveries) - set(map(str, sent_ids)))[:20]}"
    )
    assert all(n == 1 for n in sink.message_ids.values())
    assert len(sink.message_ids) == subjects


def _sent_and_identity_check(db: sa.Engine, subjects: int) -> list[int]:
    """One delivery per subject, and the ids of the sent ones."""
    with db.connect() as conn:
        rows = conn.execute(
            sa.select(deliveries.c.id, deliveries.c.subject, deliveries.c.state)
        ).all()
    per_subject = Counter(s for _, s, _ in rows)
    extra = {s: n for s, n in per_subject.items() if n != 1}
    assert not extra, f"subjects with more than one delivery: {extra}"
    assert len(per_subject) == subjects, len(per_subject)
    return [i for i, _, state in rows if state == "sent"]


class Counting:
    """A channel that keeps what it is asked to send."""

    type = "null"

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[str] = []

    def send(self, message: Message) -> Receipt:
        self.sent.append(message.message_id)
        return Receipt(provider_id=f"counted:{len(self.sent)}")

    def close(self) -> None:
        pass


def test_a_replan_racing_a_send_never_sends_twice_on_postgres(
    pg_db_url: str, tmp_path: Path
) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "job-due.email.txt").write_text(TEMPLATE)
    rules = RULES.split("rules:\n", 1)[1]  # without the smtp channel
    rf = load_rules_text(
        "timezone: UTC\nrules:\n" + rules,
        path=str(tmp_path / "duly.yaml"),
        templates_dir=str(tmp_path / "templates"),
    )
    t0 = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)
    clock = VirtualClock(t0)
    db = make_engine(pg_db_url)
    chan = Counting("email")
    try:
        engine = Engine(rf, db, clock=clock)
        engine.put_recipient(Recipient("r1", name="R", email="r1@test.example"))

        def job(due: datetime) -> SubjectInput:
            return SubjectInput("job", "J1", {"status": "open", "due_at": due.isoformat()},
                                {"owner": "r1"})  # fmt: skip

        engine.upsert_subject(job(t0))  # due now
        disp = Dispatcher(engine, {"email": chan}, Renderer(tmp_path / "templates"), send_workers=1)
        read = engine.store.existing_for

        def racing(*args: Any, **kw: Any) -> Any:
            rows = read(*args, **kw)  # the re-plan has read the row: pending, due now
            disp.run_once()  # meanwhile the dispatcher claims, sends and records it
            return rows

        engine.store.existing_for = racing  # type: ignore[method-assign]
        try:
            engine.upsert_subject(job(t0 + timedelta(minutes=5)))  # the app moves it
        finally:
            del engine.store.existing_for
        clock.set(t0 + timedelta(minutes=6))
        disp.run_once()
        disp.stop()
        with db.connect() as conn:
            rows = conn.execute(sa.select(deliveries.c.state, deliveries.c.attempts)).all()
    finally:
        db.dispose()
    assert rows == [("sent", 1)]
    assert len(chan.sent) == 1, f"sent {len(chan.sent)} times: {chan.sent}"
