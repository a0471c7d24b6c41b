"""Outgoing webhooks end to end: a real `duly serve` (tests/live.py) on SQLite and
PostgreSQL calls a real HTTP server on 127.0.0.1 — `subject.updated` from a `set`,
`delivery.sent` / `delivery.failed` from the dispatcher, a rule's `webhook:` action with its
body rendered — each signed (checked here by an independent verifier) and listed with its
attempts by GET /v1/webhooks/events. Then, in virtual time, a schedule rule and a step that
only call a webhook."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from duly.core.clock import VirtualClock
from duly.core.rules.loader import load_rules_text
from duly.delivery.webhooks import WebhookSender
from duly.engine.dispatch import Dispatcher
from duly.engine.service import Engine, SubjectInput
from duly.store.db import make_engine
from live import live_server  # tests/ is on sys.path (conftest.py)

SECRET = "whsec_" + base64.b64encode(b"live-test-secret-0123456789abcdef").decode()

RULES = """\
allow_private_targets: true
webhooks:
  - url: http://127.0.0.1:{port}/events
    secret_env: HOOK_SECRET
rules:
  - name: receipt
    subject: invoice
    on: {{change: status, to: paid}}
    category: transactional
    to: [customer]
  - name: receipt-broken
    subject: invoice
    on: {{change: status, to: paid}}
    category: transactional
    to: [customer]
  - name: mark-paid
    subject: invoice
    on: {{change: status, to: paid}}
    set: {{receipt: sent}}
    webhook:
      url: http://127.0.0.1:{port}/actions/paid
      body:
        invoice: "{{{{ subject.key }}}}"
        receipt: "{{{{ subject.attributes.receipt }}}}"
        rule: "{{{{ rule.name }}}}"
        fixed: 42
"""


def verify(secret: str, headers: dict[str, str], body: bytes, now: float | None = None) -> bool:
    """Standard Webhooks, symmetric: base64 HMAC-SHA256 of ``id.timestamp.body``."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    now = time.time() if now is None else now
    fresh = abs(now - int(headers["webhook-timestamp"])) < 1800
    return fresh and any(
        hmac.compare_digest(f"v1,{expected}", s) for s in headers["webhook-signature"].split()
    )


@dataclass
class Receiver:
    port: int = 0
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait(self, pred: Any, timeout: float = 20.0) -> list[tuple[str, dict[str, str], bytes]]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                got = [r for r in self.requests if pred(r)]
            if got:
                return got
            time.sleep(0.05)
        raise AssertionError(f"no such request; got {[r[0] for r in self.requests]}")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with rec.lock:
                rec.requests.append(
                    (self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    rec.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.slow
def test_a_running_server_sends_signed_webhooks_and_lists_them(
    tmp_path: Path, receiver: Receiver, db_url: str
) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "receipt.email.txt").write_text("Subject: Paid {{ subject.key }}\n")
    (tmp_path / "templates" / "receipt-broken.email.txt").write_text("{{ attributes.no.such }}\n")
    (tmp_path / "duly.yaml").write_text(RULES.format(port=receiver.port))
    env = {"HOOK_SECRET": SECRET}
    with (
        live_server(
            tmp_path, rules=tmp_path / "duly.yaml", database=db_url, extra_env=env
        ) as server,
        httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}, timeout=10
        ) as api,
    ):
        assert api.put("/v1/recipients/c1", json={"email": "c1@example.test"}).status_code == 201
        r = api.put(
            "/v1/subjects/invoice/INV-1",
            json={"attributes": {"status": "paid"}, "recipients": {"customer": "c1"}},
        )
        assert r.status_code in (200, 201), r.text

        def of_type(t: str) -> Any:
            return lambda r: r[0] == "/events" and json.loads(r[2])["type"] == t

        (updated,) = receiver.wait(of_type("subject.updated"))
        (sent,) = receiver.wait(of_type("delivery.sent"))
        (failed,) = receiver.wait(of_type("delivery.failed"))
        (action,) = receiver.wait(lambda r: r[0] == "/actions/paid")

        for path, headers, body in (updated, sent, failed, action):
            assert verify(SECRET, headers, body), path
            wrong = "whsec_" + base64.b64encode(b"not-the-secret-0123456789abcdef!").decode()
            assert not verify(wrong, headers, body), path

        data = json.loads(updated[2])["data"]
        assert data["subject"] == "invoice/INV-1"
        assert data["changes"] == {"receipt": "sent"}
        assert data["attributes"] == {"status": "paid", "receipt": "sent"}
        assert data["revision"] == 2
        sent_data = json.loads(sent[2])["data"]
        assert (sent_data["rule"], sent_data["recipient"], sent_data["channel"]) == (
            "receipt",
            "c1",
            "email",
        )
        assert sent_data["subject"] == "invoice/INV-1" and sent_data["attempts"] == 1
        failed_data = json.loads(failed[2])["data"]
        assert (failed_data["rule"], failed_data["reason"]) == ("receipt-broken", "render_error")
        assert json.loads(action[2]) == {
            "invoice": "INV-1",
            "receipt": "sent",
            "rule": "mark-paid",
            "fixed": 42,
        }

        def listed() -> list[dict[str, Any]]:
            r = api.get("/v1/webhooks/events", params={"state": "sent", "limit": 50})
            assert r.status_code == 200, r.text
            return list(r.json()["items"])

        deadline = time.monotonic() + 10
        while len(listed()) < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        items = listed()
        assert {"subject.updated", "delivery.sent", "delivery.failed", "action"} <= {
            i["type"] for i in items
        }
        one = api.get(f"/v1/webhooks/events/{items[0]['id']}").json()
        assert [(a["attempt"], a["status_code"]) for a in one["attempt_log"]] == [(1, 204)]
        assert api.get("/v1/webhooks/events/999999").status_code == 404
        r = api.post(f"/v1/webhooks/events/{items[0]['id']}/retry")
        assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
        assert api.get("/v1/webhooks/events", params={"state": "nope"}).status_code == 422


SCHEDULED = """\
timezone: Europe/London
rules:
  - name: heartbeat
    cron: "0 9 * * *"
    webhook:
      url: http://127.0.0.1:{port}/actions/heartbeat
      body: {{at: "{{{{ now }}}}", rule: "{{{{ rule.name }}}}"}}
  - name: expire
    subject: invoice
    steps:
      - name: tell-the-app
        at: due_at
        webhook:
          url: http://127.0.0.1:{port}/actions/due
          body: {{invoice: "{{{{ subject.key }}}}", step: "{{{{ rule.step }}}}"}}
"""


def test_a_schedule_rule_or_a_step_may_only_call_a_webhook(
    tmp_path: Path, receiver: Receiver, db_url: str
) -> None:
    t0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)  # 08:00 in London (GMT)
    clock = VirtualClock(t0)
    text = "allow_private_targets: true\n" + SCHEDULED.format(port=receiver.port)
    rf = load_rules_text(text, path=str(tmp_path / "duly.yaml"))
    db = make_engine(db_url)
    engine = Engine(rf, db, clock=clock)
    dispatcher = Dispatcher(engine, {}, None, send_workers=1)
    secret = "whsec_" + base64.b64encode(b"actions-secret-0123456789abcdef!").decode()
    sender = WebhookSender(db, rf, clock, environ={"DULY_WEBHOOK_SECRET": secret}, workers=1)
    try:
        engine.upsert_subject(
            SubjectInput("invoice", "INV-9", {"due_at": "2026-03-02T09:30:00Z"}, {})
        )
        dispatcher.run_once()  # plans the schedule's first occurrence
        assert sender.run_once() == 0

        clock.set(t0 + timedelta(hours=1))  # 09:00
        dispatcher.run_once()
        assert sender.run_once() == 1
        clock.set(t0 + timedelta(hours=1, minutes=30))  # the step's due_at
        dispatcher.run_once()
        assert sender.run_once() == 1
    finally:
        sender.close()
        db.dispose()

    (beat, due) = receiver.requests
    assert beat[0] == "/actions/heartbeat"
    assert json.loads(beat[2]) == {"at": "2026-03-02T09:00:00Z", "rule": "heartbeat"}
    assert due[0] == "/actions/due"
    assert json.loads(due[2]) == {"invoice": "INV-9", "step": "tell-the-app"}
    assert verify(secret, beat[1], beat[2], now=(t0 + timedelta(hours=1)).timestamp())
    assert verify(secret, due[1], due[2], now=(t0 + timedelta(minutes=90)).timestamp())
