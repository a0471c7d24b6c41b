"""Stopping a real `duly serve` (SIGTERM) while its relay hangs: the process ends within
10 s plus the channel's send timeout, and the delivery that was in flight is kept (its
attempt recorded), never lost."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import urllib.request
from pathlib import Path

from fakes.smtp_server import smtp_server
from live import live_server  # tests/ is on sys.path (tests/conftest.py)


class Hanging:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.arrived = threading.Event()
        self.ids: list[str] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, ANN201
        self.arrived.set()
        while not self.release.is_set():
            await asyncio.sleep(0.05)
        self.ids.append(envelope.content.split(b"Message-ID:")[1].split(b"\r\n")[0].decode())
        return "250 OK"


def _rules(tmp: Path, port: int) -> Path:
    (tmp / "templates").mkdir()
    (tmp / "templates" / "receipt.email.txt").write_text("Subject: receipt {{ subject.key }}\nok\n")
    f = tmp / "duly.yaml"
    f.write_text(
        f"""
timezone: UTC
channels:
  email: {{type: smtp, url: "smtp://127.0.0.1:{port}", from: "b@acme.test", timeout: 3}}
rules:
  - name: receipt
    subject: invoice
    on: {{change: status, to: paid}}
    category: transactional
    to: [customer]
"""
    )
    return f


def _post(url: str, key: str, path: str, body: object) -> None:
    req = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode(),
        method="PUT",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    urllib.request.urlopen(req, timeout=10).read()


def test_sigterm_with_a_hung_relay_stops_in_bounded_time_and_loses_nothing(
    tmp_path: Path,
) -> None:
    sink = Hanging()
    with smtp_server(sink) as (_, port):
        try:
            rules = _rules(tmp_path, port)
            with live_server(tmp_path, rules=rules) as live:
                _post(live.url, live.key, "/v1/recipients/c1", {"email": "c@example.test"})
                _post(
                    live.url,
                    live.key,
                    "/v1/subjects/invoice/INV-1",
                    {"attributes": {"status": "paid"}, "recipients": {"customer": "c1"}},
                )
                assert sink.arrived.wait(20)
                t0 = time.monotonic()
                live.proc.send_signal(signal.SIGTERM)
                live.proc.communicate(timeout=30)
                took = time.monotonic() - t0
                assert live.proc.returncode is not None
                assert took < 10 + 3 + 2, f"took {took:.1f} s to stop"
            sink.release.set()
            # the send ran into its timeout while stopping: recorded as a temporary failure,
            # pending again for its retry; the next start has it, and sends it when asked
            with live_server(tmp_path, rules=rules, database=live.database) as again:

                def get(path: str, method: str = "GET") -> dict:
                    req = urllib.request.Request(
                        again.url + path,
                        method=method,
                        headers={"Authorization": f"Bearer {again.key}"},
                    )
                    return json.load(urllib.request.urlopen(req, timeout=5))

                (d,) = get("/v1/deliveries")["items"]
                assert d["state"] == "pending" and d["attempts"] == 1
                get(f"/v1/deliveries/{d['id']}/send-now", "POST")
                end = time.monotonic() + 20
                while get(f"/v1/deliveries/{d['id']}")["state"] != "sent":
                    assert time.monotonic() < end
                    time.sleep(0.2)
            assert len(set(sink.ids)) == 1  # every arrival carries the one Message-ID
        finally:
            sink.release.set()


def test_a_sigterm_during_start_up_is_not_lost(tmp_path: Path) -> None:
    """A SIGTERM that lands after `duly serve` set up its own signal handling but before
    uvicorn's is in place (a start-up slowed by load) still stops the server: it used to be
    swallowed, and the server then ran until killed. The signal is sent at that exact point:
    from the start-up's last step before the server runs (gc.freeze), patched in this test's
    own process."""
    import os
    import subprocess
    import sys

    from live import free_port

    db = f"sqlite:///{tmp_path / 'duly.db'}"
    code = (
        "import gc, os, signal, sys\n"
        "freeze = gc.freeze\n"
        "def term_then_freeze():\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    freeze()\n"
        "gc.freeze = term_then_freeze\n"
        "from duly.cli import main\n"
        f"sys.argv = ['duly', 'serve', '--no-demo', '--port', '{free_port()}']\n"
        "main()\n"
    )
    env = {**os.environ, "DULY_DATABASE_URL": db}
    env.pop("DULY_RULES", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"duly serve ignored a SIGTERM sent during start-up:\n{out}") from None
    assert proc.returncode == 0, out
    assert "stopped" in out
