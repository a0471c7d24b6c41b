"""`duly serve --workers 2`: one main process (the dispatcher, scheduler, webhook sender and
maintenance) and two HTTP worker processes, on SQLite and on PostgreSQL.

Which worker served a request is read from the operating system, not from the server: each
request goes on a connection of its own, and while it is open the test looks up, in
/proc/net/tcp and /proc/PID/fd, which process holds the server's end of it (Linux only).

Asserted:

- both workers answer (``/readyz`` ok in each: it reports the main process's dispatcher);
- upserts served by either worker, from several threads at once, are each sent exactly once
  by the one dispatcher (outbox channel: one delivery, one ``sent`` outcome), promptly: an
  upsert on a worker wakes the dispatcher in the main process (SQLite: a datagram;
  PostgreSQL: NOTIFY) instead of its 30 s look, and no request fails ("database is locked");
- the web UI: signing in on one request and CSRF-protected form posts on the next ones work
  whichever worker serves each (sessions in the database, tokens signed with the
  installation's secret);
- ``/metrics`` from either worker shows the main process's dispatcher counters (what it
  sent, its claims), not the zeros of the worker's own unused dispatcher;
- SIGINT (SQLite) or SIGTERM (PostgreSQL) stops every process, cleanly.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from duly.store.db import make_engine
from live import DULY, Live, live_server  # tests/ is on sys.path (conftest.py)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc (Linux)"),
]

WORKERS = 2
RULES = """\
timezone: UTC
channels:
  email: {type: outbox}
rules:
  - name: receipt
    subject: invoice
    on: {change: status, to: paid}
    category: transactional
    to: [customer]
    channels: [email]
    template: note
"""
ADMIN = ("admin", "a long enough password 1")
_TOKEN = re.compile(r'name="csrftoken" value="([^"]+)"')


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp(f"workers-{request.param}")
    (tmp / "templates").mkdir()
    (tmp / "templates" / "note.email.txt").write_text("Subject: receipt {{ subject.key }}\nok\n")
    (tmp / "duly.yaml").write_text(RULES)
    env = {"DULY_WORKERS": str(WORKERS)}
    if request.param == "sqlite":
        with live_server(tmp, rules=tmp / "duly.yaml", extra_env=env) as live:
            yield live
        return
    with request.getfixturevalue("pg_database")() as database:
        with live_server(tmp, rules=tmp / "duly.yaml", database=database, extra_env=env) as live:
            yield live


# ----------------------------------------------------------------- which process serves


def http_workers(parent: int) -> set[int]:
    """The PIDs of uvicorn's worker processes under ``parent``."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == parent and b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            found.add(int(entry))
    return found


def serving_pid(server_port: int, client_port: int, pids: set[int]) -> int | None:
    """Which of ``pids`` holds the server's end of the connection from ``client_port``."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            local, remote = f[1], f[2]
            if (
                int(local.rsplit(":", 1)[1], 16) == server_port
                and int(remote.rsplit(":", 1)[1], 16) == client_port
            ):
                inode = f[9]
    if inode is None:
        return None
    want = f"socket:[{inode}]"
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == want:
                    return pid
            except OSError:
                continue
    return None


class Client:
    """HTTP on a new connection per request, noting which worker served each; keeps
    cookies like a browser (enough for the UI's two cookies)."""

    def __init__(self, live: Live, pids: set[int], key: str | None = None) -> None:
        parts = urllib.parse.urlsplit(live.url)
        self.host, self.port = parts.hostname or "127.0.0.1", int(parts.port or 80)
        self.pids = pids
        self.key = key
        self.cookies: dict[str, str] = {}
        self.served: Counter[int | None] = Counter()

    def request(
        self, method: str, path: str, *, form: dict[str, str] | None = None, body: Any = None
    ) -> tuple[int, dict[str, str], str]:
        headers: dict[str, str] = {}
        data = None
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request(method, path, body=data, headers=headers)
            r = conn.getresponse()
            text = r.read().decode()
            # the connection is still open (HTTP/1.1 keep-alive): find who holds its far end
            self.served[serving_pid(self.port, conn.sock.getsockname()[1], self.pids)] += 1
            for value in r.headers.get_all("set-cookie") or []:
                for name, morsel in SimpleCookie(value).items():
                    self.cookies[name] = morsel.value
            return r.status, dict(r.headers.items()), text
        finally:
            conn.close()


def test_both_workers_serve_and_each_reports_the_one_dispatcher_ready(server: Live) -> None:
    pids = http_workers(server.proc.pid)
    assert len(pids) == WORKERS, pids
    client = Client(server, pids)
    for _ in range(200):
        status, _, text = client.request("GET", "/readyz")
        assert status == 200, text
        assert json.loads(text)["checks"] == {"database": "ok", "dispatcher": "ok"}
        if set(client.served) >= pids:
            break
    assert set(client.served) == pids, client.served  # every request was placed, both served
    # one dispatcher for the whole serve: the main process's, beating in `workers`
    db = make_engine(server.database)
    end = time.monotonic() + 10  # its first heartbeat may follow the first ready answer
    try:
        while True:
            with db.connect() as conn:
                owners = conn.execute(sa.text("SELECT id FROM workers")).scalars().all()
            if owners or time.monotonic() > end:
                break
            time.sleep(0.1)
    finally:
        db.dispose()
    assert [o.split(":")[1] for o in owners] == [str(server.proc.pid)]


def test_upserts_through_both_workers_are_sent_exactly_once_and_promptly(server: Live) -> None:
    pids = http_workers(server.proc.pid)
    api = Client(server, pids, key=server.key)
    assert api.request("PUT", "/v1/recipients/c1", body={"email": "c1@example.test"})[0] in (
        200,
        201,
    )
    db = make_engine(server.database)
    n = 48

    def upsert(i: int) -> tuple[str, int, float]:
        status, _, text = api.request(
            "PUT",
            f"/v1/subjects/invoice/INV-{i}",
            body={"attributes": {"status": "paid"}, "recipients": {"customer": "c1"}},
        )
        return text, status, time.monotonic()

    try:
        with ThreadPoolExecutor(8) as pool:  # writes from both processes at once
            answers = list(pool.map(upsert, range(n)))
        bad = [(s, t) for t, s, _ in answers if s not in (200, 201)]
        assert not bad, bad[:3]
        assert set(api.served) == pids, api.served
        # every receipt goes out without waiting for the dispatcher's own 30 s look
        latencies = []
        end = time.monotonic() + 20
        pending = {f"invoice/INV-{i}": at for i, (_, _, at) in enumerate(answers)}
        while pending and time.monotonic() < end:
            with db.connect() as conn:
                sent = conn.execute(
                    sa.text("SELECT subject FROM deliveries WHERE state = 'sent'")
                ).scalars()
                now = time.monotonic()
                for subject in set(sent) & set(pending):
                    latencies.append(now - pending.pop(subject))
            time.sleep(0.02)
        assert not pending, sorted(pending)[:5]
        print(  # noqa: T201  (the measure, shown with -s)
            f"\nupsert on a worker → sent by the main process: median "
            f"{statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
        )
        assert max(latencies) < 10.0
        time.sleep(0.5)
        with db.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT d.subject, d.state, "
                    "(SELECT count(*) FROM delivery_log l WHERE l.delivery_id = d.id "
                    "AND l.kind = 'outcome' AND l.outcome = 'sent') "
                    "FROM deliveries d WHERE d.subject LIKE 'invoice/INV-%'"
                )
            ).all()
    finally:
        db.dispose()
    assert Counter(r[0] for r in rows) == {f"invoice/INV-{i}": 1 for i in range(n)}
    assert {(r[1], r[2]) for r in rows} == {("sent", 1)}


def _sent_in_metrics(text: str) -> tuple[float, float]:
    """(sent outcomes, claim transactions) in a /metrics answer."""
    sent = claims = 0.0
    for line in text.splitlines():
        if line.startswith("duly_deliveries_total{") and 'outcome="sent"' in line:
            sent += float(line.rsplit(" ", 1)[1])
        elif line.startswith("duly_claim_seconds_count"):
            claims += float(line.rsplit(" ", 1)[1])
    return sent, claims


def test_metrics_from_either_worker_show_the_main_process_dispatcher(server: Live) -> None:
    pids = http_workers(server.proc.pid)
    api = Client(server, pids, key=server.key)
    assert api.request("PUT", "/v1/recipients/m1", body={"email": "m1@example.test"})[0] in (
        200,
        201,
    )
    for i in range(3):
        status, _, text = api.request(
            "PUT",
            f"/v1/subjects/invoice/MET-{i}",
            body={"attributes": {"status": "paid"}, "recipients": {"customer": "m1"}},
        )
        assert status in (200, 201), text
    db = make_engine(server.database)
    q = sa.text("SELECT count(*) FROM delivery_log WHERE kind = 'outcome' AND outcome = 'sent'")
    end = time.monotonic() + 20
    try:
        while True:
            with db.connect() as conn:
                pending = conn.execute(
                    sa.text("SELECT count(*) FROM deliveries WHERE subject LIKE 'invoice/MET-%' "
                            "AND state <> 'sent'")
                ).scalar()  # fmt: skip
            if not pending or time.monotonic() > end:
                break
            time.sleep(0.05)
        assert pending == 0
        with db.connect() as conn:
            sent_in_db = conn.execute(q).scalar()
    finally:
        db.dispose()
    assert sent_in_db >= 3
    # every worker answers with the main process's counters (published within a second or so)
    scrapes = Client(server, pids)
    seen: dict[int | None, tuple[float, float]] = {}
    end = time.monotonic() + 20
    while time.monotonic() < end:
        before = dict(scrapes.served)
        status, _, text = scrapes.request("GET", "/metrics")
        assert status == 200, text
        (who,) = [p for p in scrapes.served if scrapes.served[p] != before.get(p, 0)]
        seen[who] = _sent_in_metrics(text)
        if set(seen) >= pids and all(s == sent_in_db and c > 0 for s, c in seen.values()):
            break
        time.sleep(0.1)
    assert set(seen) == pids, seen
    assert {p: s for p, (s, _) in seen.items()} == {p: float(sent_in_db) for p in pids}, seen
    assert all(c > 0 for _, c in seen.values()), seen
    assert "duly_dispatcher_up 1.0" in text and "duly_pending" in text


def test_signing_in_and_csrf_protected_posts_work_whichever_worker_answers(
    server: Live,
) -> None:
    subprocess.run(
        [
            *DULY,
            "users",
            "create",
            ADMIN[0],
            "--role",
            "admin",
            "--password-stdin",
            "--database",
            server.database,
        ],
        input=ADMIN[1] + "\n",
        env=server.env,
        check=True,
        capture_output=True,
        text=True,
    )
    pids = http_workers(server.proc.pid)
    web = Client(server, pids)
    status, _, page = web.request("GET", "/login")
    assert status == 200
    token = _TOKEN.search(page).group(1)  # type: ignore[union-attr]
    status, headers, _ = web.request(
        "POST", "/login", form={"csrftoken": token, "username": ADMIN[0], "password": ADMIN[1]}
    )
    assert status == 303, headers
    for i in range(30):
        status, _, page = web.request("GET", "/account")
        assert status == 200, page[:300]
        token = _TOKEN.search(page).group(1)  # type: ignore[union-attr]
        tz = ("Europe/Paris", "America/New_York")[i % 2]
        status, headers, _ = web.request(
            "POST", "/account/timezone", form={"csrftoken": token, "timezone": tz}
        )
        assert status == 303 and headers.get("location") == "/account", (status, headers)
        if i >= 5 and set(web.served) >= pids:
            break
    assert set(web.served) == pids, web.served
    # and a forged token is refused by any of them
    status, _, _ = web.request("POST", "/account/timezone", form={"csrftoken": "forged"})
    assert status == 403


def test_a_signal_stops_every_process_cleanly(server: Live, request: pytest.FixtureRequest) -> None:
    pids = http_workers(server.proc.pid)
    assert len(pids) == WORKERS
    sig = signal.SIGINT if "sqlite" in request.node.callspec.id else signal.SIGTERM
    t0 = time.monotonic()
    server.proc.send_signal(sig)
    out, _ = server.proc.communicate(timeout=60)
    took = time.monotonic() - t0
    assert server.proc.returncode == 0, out
    assert took < 30, took
    end = time.monotonic() + 5
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < end:
        time.sleep(0.05)  # the workers ended before their parent: at most reaped late
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids), pids
    assert "database is locked" not in out
    assert "Traceback" not in out, out


def test_wakeups_carry_messages_both_ways_and_the_dispatcher_status() -> None:
    """In one process: what the main process and a worker say to each other."""
    import threading

    from duly.engine.runtime import HTTP_SOCKET_PREFIX, MAIN_SOCKET, Wakeups

    main = Wakeups.create()
    worker = Wakeups(main.directory)
    got: dict[str, list[bytes]] = {"main": [], "worker": []}
    arrived = threading.Event()

    def keep(where: str) -> Any:
        return lambda msg: (got[where].append(msg), arrived.set())

    try:
        assert not worker.main_alive()  # nothing said yet
        alive = [True]
        main.listen(MAIN_SOCKET, keep("main"), on_tick=lambda: main.write_status(alive[0]))
        worker.listen(f"{HTTP_SOCKET_PREFIX}1", keep("worker"))
        t0 = time.monotonic()
        assert worker.send(MAIN_SOCKET, b"planned 2030-01-01T00:00:00+00:00")
        assert arrived.wait(2)
        print(f"\nwake-up datagram: {(time.monotonic() - t0) * 1e6:.0f} µs")  # noqa: T201
        arrived.clear()
        main.broadcast(b"inbox r1")
        assert arrived.wait(2)
        assert got == {"main": [b"planned 2030-01-01T00:00:00+00:00"], "worker": [b"inbox r1"]}
        assert worker.main_alive()
        alive[0] = False
        main.write_status(False)
        assert not worker.main_alive()
        assert not worker.send(f"{HTTP_SOCKET_PREFIX}999", b"x")  # nobody there: no error
    finally:
        worker.close()
        main.close()
    assert not Path(main.directory).exists()
