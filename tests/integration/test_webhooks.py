"""Outgoing webhooks against a real HTTP server on 127.0.0.1 and a real database (SQLite and
PostgreSQL): the outbox, Standard Webhooks signatures checked by an independent verifier,
retries with backoff, 410, timeouts, leases, and the refusal of private targets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from duly.core.clock import SystemClock, VirtualClock
from duly.core.model import RuleFile
from duly.core.rules.loader import load_rules_text
from duly.delivery.webhooks import (
    ACTION_SECRET_ENV,
    RetryPolicy,
    WebhookSender,
    action_secret_env,
    address_problem,
    decode_secret,
    emit,
    emit_action,
    get_event,
    list_events,
    outbox,
    prune,
    retry,
    signature,
)
from duly.delivery.webhooks.targets import TargetRefused, pin
from duly.store.db import make_engine, write_transaction
from duly.store.tables import webhook_attempts, webhook_events

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"fedcba9876543210fedcba9876543210").decode()
ENV = {"HOOK_SECRET": SECRET}


# --------------------------------------------------------------------------- the receiver


def verify(secret: str, headers: dict[str, str], body: bytes, now: int) -> bool:
    """A receiver's check, written from the Standard Webhooks spec and not with duly's code:
    HMAC-SHA256 over ``id.timestamp.body`` with the secret (base64 after ``whsec_``, else
    its bytes), any ``v1,`` signature of the space-separated list, timestamp within 5 min."""
    raw = secret[len("whsec_") :] if secret.startswith("whsec_") else None
    key = base64.b64decode(raw) if raw is not None else secret.encode()
    msg_id, ts = headers["webhook-id"], headers["webhook-timestamp"]
    mac = hmac.new(key, msg_id.encode() + b"." + ts.encode() + b"." + body, hashlib.sha256)
    expected = base64.b64encode(mac.digest())
    for sig in headers["webhook-signature"].split(" "):
        version, _, value = sig.partition(",")
        if version == "v1" and hmac.compare_digest(expected, value.encode()):
            return abs(now - int(ts)) <= 300
    return False


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A real HTTP server: records every request; answers from a script per path (a list of
    status codes consumed one per request, the last one repeating), or sleeps on /slow."""

    port: int = 0
    requests: list[Request] = field(default_factory=list)
    script: dict[str, list[int]] = field(default_factory=dict)
    slow: float = 1.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def answer(self, path: str) -> int:
        with self.lock:
            codes = self.script.get(path, [200])
            return codes.pop(0) if len(codes) > 1 else codes[0]

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Request]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.requests) >= n:
                    return list(self.requests)
            time.sleep(0.01)
        raise AssertionError(f"expected {n} requests, got {len(self.requests)}")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            with rec.lock:
                rec.requests.append(Request(self.path, headers, body, time.monotonic()))
            if self.path == "/slow":
                time.sleep(rec.slow)
            code = rec.answer(self.path)
            try:
                payload = b"gone for good" if code == 410 else b"ok" if code < 300 else b"oops"
                self.send_response(code)
                if code == 503:
                    self.send_header("retry-after", "600")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:  # the sender gave up waiting (timeout tests)
                pass

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


# --------------------------------------------------------------------------- helpers


def rules_for(
    receiver: Receiver, *targets: str, allow_private: bool = True, host: str = "127.0.0.1"
) -> RuleFile:
    """A rule file whose ``webhooks:`` targets are paths on the receiver; a target may name
    its events after a space (``"/a delivery.*,subject.updated"``)."""
    lines = [f"allow_private_targets: {'true' if allow_private else 'false'}", "webhooks:"]
    for t in targets or ("/hook",):
        path, _, events = t.partition(" ")
        lines.append(f"  - url: {receiver.url(path, host)}")
        lines.append("    secret_env: HOOK_SECRET")
        if events:
            lines.append(f"    events: [{events}]")
    lines.append("rules: []")
    return load_rules_text("\n".join(lines) + "\n", environ=ENV)


@pytest.fixture
def db(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def make_sender(db: Engine) -> Iterator[Callable[..., WebhookSender]]:
    made: list[WebhookSender] = []

    def make(rules: RuleFile, clock: Any, **kw: Any) -> WebhookSender:
        kw.setdefault("environ", ENV)
        kw.setdefault("workers", 1)
        s = WebhookSender(db, rules, clock, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def emit_now(db: Engine, rules: RuleFile, type: str, data: dict[str, Any], now: datetime) -> int:
    with write_transaction(db) as conn:
        return emit(conn, rules, type, data, now)


def events(db: Engine) -> list[dict[str, Any]]:
    with db.connect() as conn:
        q = sa.select(webhook_events).order_by(webhook_events.c.id)
        return [dict(r) for r in conn.execute(q).mappings()]


def attempts(db: Engine, event_id: int) -> list[dict[str, Any]]:
    with db.connect() as conn:
        q = (
            sa.select(webhook_attempts)
            .where(webhook_attempts.c.event_id == event_id)
            .order_by(webhook_attempts.c.id)
        )
        return [dict(r) for r in conn.execute(q).mappings()]


# --------------------------------------------------------------------------- signing


def test_signature_matches_the_standard_webhooks_reference_vector() -> None:
    key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    sig = signature(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.mark.parametrize("padding", ["", "=", "=="])
def test_a_whsec_secret_may_leave_out_its_base64_padding(padding: str) -> None:
    """As the Standard Webhooks reference library does (it decodes ``secret + "=="``)."""
    standardwebhooks = pytest.importorskip("standardwebhooks")
    key = bytes(range(200, 232))  # 32 bytes: standard base64 ends in one "="
    unpadded = "whsec_" + base64.b64encode(key).decode().rstrip("=")
    assert decode_secret(unpadded + padding) == key
    reference = standardwebhooks.Webhook(unpadded).sign(
        "msg_1", datetime.fromtimestamp(1, UTC), "{}"
    )
    assert signature(key, "msg_1", 1, b"{}") == reference
    with pytest.raises(ValueError, match="not base64"):
        decode_secret(unpadded[:-1] + "*")


def test_secrets_are_whsec_base64_or_a_plain_string() -> None:
    assert decode_secret("whsec_" + base64.b64encode(b"k" * 24).decode()) == b"k" * 24
    assert decode_secret("a plain shared string") == b"a plain shared string"
    with pytest.raises(ValueError, match="not base64"):
        decode_secret("whsec_not*base64")
    with pytest.raises(ValueError, match="empty"):
        decode_secret("")


# --------------------------------------------------------------------------- emit


def test_emit_queues_one_event_per_subscribed_target_in_an_envelope(
    db: Engine, receiver: Receiver
) -> None:
    rules = rules_for(receiver, "/all", "/deliveries delivery.*", "/subjects subject.updated")
    data = {"subject": "invoice/INV-1", "at": T0, "changes": {"status": "EXPIRED"}}

    assert emit_now(db, rules, "subject.updated", data, T0) == 2
    assert emit_now(db, rules, "delivery.sent", {"delivery": 7}, T0) == 2
    assert emit_now(db, rules, "other.type", {}, T0) == 1  # only "/all" listens
    quiet = rules_for(receiver, "/deliveries delivery.*")
    assert emit_now(db, quiet, "subject.updated", data, T0) == 0

    rows = events(db)
    assert [(r["type"], r["url"].rsplit("/", 1)[1]) for r in rows[:4]] == [
        ("subject.updated", "all"),
        ("subject.updated", "subjects"),
        ("delivery.sent", "all"),
        ("delivery.sent", "deliveries"),
    ]
    first = rows[0]
    assert first["payload"] == {
        "type": "subject.updated",
        "timestamp": "2026-03-02T08:00:00Z",
        "data": {
            "subject": "invoice/INV-1",
            "at": "2026-03-02T08:00:00Z",
            "changes": {"status": "EXPIRED"},
        },
    }
    assert (first["state"], first["attempts"], first["next_at"]) == ("pending", 0, T0)
    assert first["secret_env"] == "HOOK_SECRET"
    # the targets of one event share its webhook-id; another event has its own
    assert rows[0]["msg_id"] == rows[1]["msg_id"] != rows[2]["msg_id"]
    assert rows[0]["msg_id"].startswith("msg_") and "." not in rows[0]["msg_id"]


def test_an_event_is_written_only_if_the_callers_transaction_commits(
    db: Engine, receiver: Receiver
) -> None:
    rules = rules_for(receiver)
    with pytest.raises(RuntimeError), write_transaction(db) as conn:
        emit(conn, rules, "subject.updated", {"subject": "a/b"}, T0)
        raise RuntimeError("the change it reports failed")
    assert events(db) == []


# --------------------------------------------------------------------------- sending


@pytest.mark.parametrize("secret", [SECRET, "a plain shared string"], ids=["whsec", "plain"])
def test_an_event_is_posted_signed_and_verifies_only_with_the_right_secret(
    db: Engine, receiver: Receiver, make_sender: Callable[..., WebhookSender], secret: str
) -> None:
    clock = VirtualClock(T0)
    rules = rules_for(receiver)
    emit_now(db, rules, "subject.updated", {"subject": "invoice/INV-1", "revision": 3}, T0)

    assert make_sender(rules, clock, environ={"HOOK_SECRET": secret}).run_once() == 1

    (req,) = receiver.requests
    assert req.path == "/hook"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["webhook-timestamp"] == str(int(T0.timestamp()))
    assert req.headers["webhook-id"] == events(db)[0]["msg_id"]
    assert req.json()["data"] == {"subject": "invoice/INV-1", "revision": 3}
    now = int(T0.timestamp())
    assert verify(secret, req.headers, req.body, now)
    assert not verify(OTHER_SECRET, req.headers, req.body, now)
    assert not verify(secret, req.headers, req.body + b" ", now)  # the body as sent, exactly
    assert not verify(secret, req.headers, req.body, now + 3600)  # a replay an hour later

    (ev,) = events(db)
    assert (ev["state"], ev["attempts"], ev["sent_at"], ev["last_status"]) == ("sent", 1, T0, 200)
    assert ev["lease_owner"] is None and ev["last_error"] is None
    (att,) = attempts(db, ev["id"])
    assert (att["attempt"], att["status_code"], att["error"]) == (1, 200, None)
    assert att["duration_ms"] >= 0
    assert make_sender(rules, clock).run_once() == 0  # sent once, ever


def test_500s_are_retried_with_exponential_backoff_and_jitter_then_sent(
    db: Engine, receiver: Receiver, make_sender: Callable[..., WebhookSender]
) -> None:
    receiver.script["/flaky"] = [500, 502, 200]
    clock = VirtualClock(T0)
    rules = rules_for(receiver, "/flaky")
    emit_now(db, rules, "delivery.sent", {"delivery": 1}, T0)
    s = make_sender(rules, clock)

    assert s.run_once() == 1
    (ev,) = events(db)
    assert (ev["state"], ev["attempts"], ev["last_status"]) == ("pending", 1, 500)
    assert ev["last_error"] == "HTTP 500: oops"
    assert T0 + timedelta(seconds=27) <= ev["next_at"] <= T0 + timedelta(seconds=33)
    assert s.run_once() == 0  # not due yet
    assert s.next_due() == ev["next_at"]

    t1 = ev["next_at"]
    clock.set(t1)
    assert s.run_once() == 1
    (ev,) = events(db)
    assert (ev["state"], ev["attempts"], ev["last_status"]) == ("pending", 2, 502)
    assert t1 + timedelta(seconds=54) <= ev["next_at"] <= t1 + timedelta(seconds=66)

    t2 = ev["next_at"]
    clock.set(t2)
    assert s.run_once() == 1
    (ev,) = events(db)
    assert (ev["state"], ev["attempts"], ev["sent_at"]) == ("sent", 3, t2)
    assert [(a["attempt"], a["status_code"]) for a in attempts(db, ev["id"])] == [
        (1, 500),
        (2, 502),
        (3, 200),
    ]
    # the same webhook-id on every retry; each attempt signed anew with its own timestamp
    reqs = receiver.requests
    assert len({r.headers["webhook-id"] for r in reqs}) == 1
    assert [int(r.headers["webhook-timestamp"]) for r in reqs] == [
        int(t.timestamp()) for t in (T0, t1, t2)
    ]
    assert all(verify(SECRET, r.headers, r.body, int(r.headers["webhook-timestamp"])) for r in reqs)
    assert s.next_due() is None


def test_retry_after_is_honoured_and_retries_end_in_failed(
    db: Engine, receiver: Receiver, make_sender: Callable[..., WebhookSender]
) -> None:
    receiver.script["/busy"] = [503]
    clock = VirtualClock(T0)
    rules = rules_for(receiver, "/busy")
    emit_now(db, rules, "delivery.failed", {"delivery": 1}, T0)
    s = make_sender(rules, clock, retry=RetryPolicy(attempts=3))

    s.run_once()
    (ev,) = events(db)
    assert ev["next_at"] == T0 + timedelta(seconds=600)  # Retry-After: 600 beats 30 s
    for _ in range(2):
        clock.set(events(db)[0]["next_at"])
        assert s.run_once() == 1
    (ev,) = events(db)
    assert (ev["state"], ev["attempts"], ev["last_status"]) == ("failed", 3, 503)
    assert ev["last_error"] == "HTTP 503: oops (gave up after 3 attempts)"
    assert s.next_due() is None
    assert len(receiver.requests) == 3


def test_410_fails_at_once(
    db: Engine, receiver: Receiver, make_sender: Callable[..., WebhookSender]
) -> None:
    receiver.script["/gone"] = [410]
    clock = VirtualClock(T0)
    rules = rules_for(receiver, "/gone")
    emit_now(db, rules, "delivery.sent", {"delivery": 1}, T0)

    make_sender(rules, clock).run_once()

    (ev,) = events(db)
    assert (ev["state"], ev["attempts"], ev["last_status"]) == ("failed", 1, 410)
    assert "410" in ev["last_error"] and "wants no more" in ev["last_error"]
    clock.set(T0 + timedelta(days=1))
    assert make_sender(rules, clock).run_once() == 0
    assert len(receiver.requests) == 1


def test_other_4xx_and_redirects_are_retried(
    db: Engine, receiver: Receiver, make_sender: Callable[..., WebhookSender]
) -> None:
    receiver.script["/auth"] = [401, 200]
    receiver.script["/moved"] = [301, 200]
    clock = VirtualClock(T0)
    rules = rules_for(receiver, "/auth", "/moved")
    emit_now(db, rules, "delivery.sent", {"delivery": 1}, T0)

    make_sender(rules, clock).run_once()

    auth, moved = events(db)
    assert (auth["state"], auth["last_status"], auth["last_error"]) == (
        "pending",
        401,
        "HTTP 401: oops",
    )
    assert moved["state"] == "pending" and "redirects are not followed" in moved["last_error"]
    clock.set(T0 + timedelta(minutes=1))
    make_sender(rules, clock).run_once()
    assert [e["state"] for e in events(db)] == ["sent", "sent"]


def test_a_slow_receiver_times_out_and_is_retried(
    db: Engine, receiver: Receiver, make_sender: Callable[..., WebhookSender]
) -> None:
    receiver.slow = 1.0
    clock = VirtualClock(T0)
    rules = rules_for(receiver, "/slow")
    emit_now(db, rules, "delivery.sent", {"delivery": 1}, T0)

    t0 = time.monotonic()
    make_sender(rules, clock, timeout=httpx.Timeout(0.2)).run_once()
    assert time.monotonic() - t0 < 0.9

    (ev,) = events(db)
    assert (ev["state"], ev["attempts"], ev["last_status"]) == ("pending", 1, None)
    assert ev["last_error"].startswith("timed out")
    (att,) = attempts(db, ev["id"])
    assert att["status_code"] is None and att["error"].startswith("timed out")
    assert 150 <= att["duration_ms"] < 900


def test_a_refused_connection_is_retried(
    db: Engine, make_sender: Callable[..., WebhookSender]
) -> None:
    closed = Receiver(port=9)  # discard: nothing listens on 127.0.0.1:9 here
    clock = VirtualClock(T0)
    rules = rules_for(closed)
    emit_now(db, rules, "delivery.sent", {"delivery": 1}, T0)

    make_sender(rules, clock).run_once()

    (ev,) = events(db)
    assert ev["state"] == "pending" and ev["last_error"].startswith("ConnectError")


def test_a_missing_or_bad_secret_fails_the_event_with_a_clear_error(
    db: Engine, receiver: Receiver, make_sender: Callable[..., WebhookSender]
) -> None:
    clock = VirtualClock(T0)
    rules = rules_for(receiver)
    emit_now(db, rules, "delivery.sent", {"delivery": 1}, T0)
    emit_now(db, rules, "delivery.sent", {"delivery": 2}, T0)

    make_sender(rules, clock, environ={}).run_once()
    ev = events(db)
    assert [e["state"] for e in ev] == ["failed", "failed"]
    assert ev[0]["last_error"] == "cannot sign: environment variable HOOK_SECRET is not set"

    with write_transaction(db) as conn:
        assert retry(conn, ev[1]["id"], T0)
    make_sender(rules, clock, environ={"HOOK_SECRET": "whsec_%%%"}).run_once()
    assert "not base64" in events(db)[1]["last_error"]
    assert receiver.requests == []


# --------------------------------------------------------------------------- private targets


def test_private_targets_are_refused_unless_allowed(
    db: Engine, receiver: Receiver, make_sender: Callable[..., WebhookSender]
) -> None:
    clock = VirtualClock(T0)
    by_ip = rules_for(receiver, allow_private=False)
    by_name = rules_for(receiver, allow_private=False, host="localhost")
    emit_now(db, by_ip, "delivery.sent", {"delivery": 1}, T0)
    emit_now(db, by_name, "delivery.sent", {"delivery": 2}, T0)

    assert make_sender(by_ip, clock).run_once() == 2

    assert receiver.requests == []  # nothing ever reached the server
    ip_ev, name_ev = events(db)
    assert (ip_ev["state"], ip_ev["attempts"]) == ("failed", 1)
    assert ip_ev["last_error"].startswith("refused: 127.0.0.1 is a loopback address")
    assert "allow_private_targets: true" in ip_ev["last_error"]
    assert name_ev["state"] == "failed"
    assert "localhost resolves to" in name_ev["last_error"]
    (att,) = attempts(db, ip_ev["id"])
    assert att["status_code"] is None and att["error"] == ip_ev["last_error"]

    # the same target, allowed
    emit_now(db, by_ip, "delivery.sent", {"delivery": 3}, T0)
    allowed = rules_for(receiver, allow_private=True)
    assert make_sender(allowed, clock).run_once() == 1
    assert len(receiver.requests) == 1


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "carrier-grade NAT (100.64.0.0/10)"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fd00::1", "unique local (fc00::/7)"),
        ("fe80::1", "link-local"),
        ("ff02::1", "multicast"),
        ("::ffff:10.0.0.1", "private (embedded in "),
        ("2002:7f00:1::", "loopback (embedded in 2002:7f00:1::)"),
        ("64:ff9b::a9fe:a9fe", "link-local (embedded in 64:ff9b::a9fe:a9fe)"),
        ("172.32.0.1", None),
        ("93.184.216.34", None),
        ("2606:2800:220:1::1", None),
    ],
)
def test_address_problems(address: str, problem: str | None) -> None:
    found = address_problem(address)
    if problem is None or not problem.endswith("in "):
        assert found == problem
    else:  # how Python prints an IPv4-mapped address changed in 3.13
        assert found is not None and found.startswith(problem)


def test_every_resolved_address_is_checked_so_dns_cannot_smuggle_a_private_one() -> None:
    def resolve(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "10.0.0.5"]

    with pytest.raises(TargetRefused, match=r"hooks.example.com resolves to 10.0.0.5"):
        pin("https://hooks.example.com/in", allow_private=False, resolve=resolve)


def test_the_connection_goes_to_the_address_that_was_checked(
    db: Engine, make_sender: Callable[..., WebhookSender]
) -> None:
    # No public network here: a mock transport at the network edge shows what would be
    # connected to. The resolver answers differently on each call (DNS rebinding): the
    # request still goes to the address checked, with the original Host and TLS name.
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    client = httpx.Client(transport=httpx.MockTransport(handler))
    text = (
        "webhooks:\n  - url: https://hooks.example.com:8443/in?token=s3cret\n"
        "    secret_env: HOOK_SECRET\nrules: []\n"
    )
    rules = load_rules_text(text, environ=ENV)
    clock = VirtualClock(T0)
    emit_now(db, rules, "delivery.sent", {"delivery": 1}, T0)

    make_sender(rules, clock, client=client, resolver=lambda h, p: next(answers)).run_once()

    (req,) = seen
    assert str(req.url) == "https://93.184.216.34:8443/in?token=s3cret"
    assert req.headers["host"] == "hooks.example.com:8443"
    assert req.extensions["sni_hostname"] == "hooks.example.com"
    assert verify(SECRET, dict(req.headers), req.content, int(T0.timestamp()))
    assert events(db)[0]["state"] == "sent"
    client.close()


# --------------------------------------------------------------------------- actions


def test_an_action_body_is_rendered_in_a_sandbox_and_sent_as_is(
    db: Engine, receiver: Receiver, make_sender: Callable[..., WebhookSender]
) -> None:
    rules = rules_for(receiver)  # the action's URL is on the target's origin: its secret
    url = receiver.url("/actions/expired")
    assert action_secret_env(rules, url) == "HOOK_SECRET"
    body = {
        "invoice": "{{ subject.key }}",
        "status": "{{ subject.attributes.status | lower }}",
        "amount": 12.5,
        "flags": [True, "{{ rule.name }}/{{ rule.step }}"],
        "at": "{{ now }}",
        "from_event": "{{ event.data.reason }}",  # no event: empty, not an error
        "nested": {"plain": "no template here {not jinja}"},
    }
    context = {
        "subject": {"kind": "invoice", "key": "INV-1", "attributes": {"status": "EXPIRED"}},
        "rule": {"name": "expire", "step": "grace-over"},
    }
    with write_transaction(db) as conn:
        eid = emit_action(conn, url, body, "HOOK_SECRET", T0, context=context)

    make_sender(rules, VirtualClock(T0)).run_once()

    (req,) = receiver.requests
    assert req.path == "/actions/expired"
    assert req.json() == {
        "invoice": "INV-1",
        "status": "expired",
        "amount": 12.5,
        "flags": [True, "expire/grace-over"],
        "at": "2026-03-02T08:00:00Z",
        "from_event": "",
        "nested": {"plain": "no template here {not jinja}"},
    }
    assert verify(SECRET, req.headers, req.body, int(T0.timestamp()))
    with db.connect() as conn:
        ev = get_event(conn, eid)
    assert ev is not None and (ev["type"], ev["state"]) == ("action", "sent")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "unsafe"),
        ("{{ 'x' * 1000000 }}", "too long"),
        ("{{ 1 / 0 }}", "division by zero"),
        ("{{ subject.key", "unexpected end of template"),
    ],
)
def test_a_body_template_that_fails_leaves_the_event_failed_naming_the_field(
    db: Engine, receiver: Receiver, template: str, message: str
) -> None:
    with write_transaction(db) as conn:
        eid = emit_action(
            conn,
            receiver.url("/a"),
            {"ok": "fine", "deep": {"bad": [template]}},
            "HOOK_SECRET",
            T0,
            context={"subject": {"key": "INV-1"}},
        )
    (ev,) = events(db)
    assert ev["id"] == eid and ev["state"] == "failed" and ev["attempts"] == 0
    assert ev["last_error"].startswith("body.deep.bad[0]: cannot render")
    assert message in ev["last_error"]


def test_an_action_off_every_targets_origin_is_signed_with_duly_webhook_secret(
    db: Engine, receiver: Receiver, make_sender: Callable[..., WebhookSender]
) -> None:
    rules = rules_for(receiver)
    url = receiver.url("/x", host="localhost")  # another origin (host differs)
    assert action_secret_env(rules, url) == ACTION_SECRET_ENV
    with write_transaction(db) as conn:
        emit_action(conn, url, {"a": 1}, action_secret_env(rules, url), T0)

    make_sender(rules, VirtualClock(T0)).run_once()
    (ev,) = events(db)
    assert ev["last_error"] == "cannot sign: environment variable DULY_WEBHOOK_SECRET is not set"

    with write_transaction(db) as conn:
        assert retry(conn, ev["id"], T0)
    env = {ACTION_SECRET_ENV: "shared"}
    make_sender(rules, VirtualClock(T0), environ=env).run_once()
    (req,) = receiver.requests
    assert verify("shared", req.headers, req.body, int(T0.timestamp()))


# --------------------------------------------------------------------------- leases, loop


def test_two_senders_never_send_an_event_twice(
    db: Engine, receiver: Receiver, make_sender: Callable[..., WebhookSender]
) -> None:
    clock = VirtualClock(T0)
    rules = rules_for(receiver)
    with write_transaction(db) as conn:
        for i in range(60):
            emit(conn, rules, "delivery.sent", {"delivery": i}, T0)
    senders = [make_sender(rules, clock, workers=3, owner=f"s{i}") for i in range(3)]
    barrier = threading.Barrier(len(senders))
    counts: list[int] = []

    def run(s: WebhookSender) -> None:
        barrier.wait()
        counts.append(s.run_once())

    threads = [threading.Thread(target=run, args=(s,)) for s in senders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    assert sum(counts) == 60
    ids = [r.json()["data"]["delivery"] for r in receiver.requests]
    assert sorted(ids) == list(range(60))
    assert all(e["state"] == "sent" and e["attempts"] == 1 for e in events(db))


def test_an_event_whose_sender_died_is_taken_over_after_its_lease(
    db: Engine, receiver: Receiver, make_sender: Callable[..., WebhookSender]
) -> None:
    clock = VirtualClock(T0)
    rules = rules_for(receiver)
    emit_now(db, rules, "delivery.sent", {"delivery": 1}, T0)
    with write_transaction(db) as conn:
        (dead,) = outbox.claim_due(conn, T0, "dead", timedelta(minutes=5), 10)
    assert dead.attempt == 1

    s = make_sender(rules, clock)
    assert s.run_once() == 0  # held by the dead sender
    assert s.next_due() == T0 + timedelta(minutes=5)
    clock.set(T0 + timedelta(minutes=5))
    assert s.run_once() == 1
    assert events(db)[0]["state"] == "sent"

    # the dead sender coming back cannot overwrite the outcome
    late = outbox.Attempt("pending", 500, "HTTP 500", 5, next_at=T0 + timedelta(hours=1))
    with write_transaction(db) as conn:
        assert not outbox.record(conn, dead, late, "dead", T0 + timedelta(minutes=6))
    assert events(db)[0]["state"] == "sent"


def test_run_forever_sends_new_events_and_stops(
    db: Engine, receiver: Receiver, make_sender: Callable[..., WebhookSender]
) -> None:
    rules = rules_for(receiver)
    s = make_sender(rules, SystemClock(), workers=2)
    stop = threading.Event()
    thread = threading.Thread(target=s.run_forever, args=(stop,), kwargs={"poll": 5.0})
    thread.start()
    try:
        time.sleep(0.1)
        emit_now(db, rules, "subject.updated", {"subject": "a/b"}, datetime.now(UTC))
        s.wake()
        (req,) = receiver.wait_for(1, timeout=5)
        assert req.json()["type"] == "subject.updated"
    finally:
        stop.set()
        s.wake()
        thread.join(10)
    assert not thread.is_alive()


# --------------------------------------------------------------------------- operator


def test_list_get_retry_and_prune(db: Engine, receiver: Receiver) -> None:
    rules = load_rules_text(
        "webhooks:\n  - url: https://user:pw@hooks.example.com/in?token=s3cret\n"
        "    secret_env: HOOK_SECRET\nrules: []\n",
        environ=ENV,
    )
    emit_now(db, rules, "subject.updated", {"n": 1}, T0)
    emit_now(db, rules, "delivery.sent", {"n": 2}, T0 + timedelta(minutes=1))
    first, second = (e["id"] for e in events(db))
    with write_transaction(db) as conn:
        (c,) = outbox.claim_due(conn, T0, "me", timedelta(minutes=5), 1)
        outbox.record(conn, c, outbox.Attempt("failed", 410, "HTTP 410", 12), "me", T0)

    with db.connect() as conn:
        listed = list_events(conn)
        failed = list_events(conn, state="failed")
        page = list_events(conn, before_id=second)
        detail = get_event(conn, first)
        assert get_event(conn, 10**9) is None
    assert [e["id"] for e in listed] == [second, first]  # newest first
    assert [e["id"] for e in failed] == [first] and [e["id"] for e in page] == [first]
    assert listed[0]["url"] == "https://***@hooks.example.com/in?***"
    assert listed[0]["next_at"] == T0 + timedelta(minutes=1) and failed[0]["next_at"] is None
    assert detail is not None and detail["payload"]["data"] == {"n": 1}
    assert [(a["attempt"], a["status_code"], a["duration_ms"]) for a in detail["attempt_log"]] == [
        (1, 410, 12)
    ]

    with write_transaction(db) as conn:
        assert retry(conn, first, T0 + timedelta(seconds=30))
        assert not retry(conn, first, T0)  # pending now, not failed
        assert not retry(conn, second, T0)
    ev = events(db)[0]
    assert (ev["state"], ev["attempts"], ev["next_at"]) == (
        "pending",
        0,
        T0 + timedelta(seconds=30),
    )

    with write_transaction(db) as conn:
        c = outbox.claim_due(conn, T0 + timedelta(hours=1), "me", timedelta(minutes=5), 1)[0]
        assert c.id == first  # due before the other
        assert c.attempt == 1  # a full set of retries again
        outbox.record(conn, c, outbox.Attempt("sent", 200, None, 3), "me", T0)
        assert prune(conn, T0 + timedelta(days=1)) == 1  # the pending one is kept
    assert [e["id"] for e in events(db)] == [second]
    assert attempts(db, first) == []  # gone with their event


def test_the_reference_page_documents_every_event_type() -> None:
    page = Path(__file__).parents[2] / "docs" / "reference" / "webhooks.md"
    text = page.read_text()
    for name in ("subject.updated", "delivery.sent", "delivery.failed", "action"):
        assert f"`{name}`" in text
    for header in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        assert header in text
