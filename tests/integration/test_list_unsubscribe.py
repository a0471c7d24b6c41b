"""List-Unsubscribe on real email (RFC 2369, RFC 8058): the dispatcher with its preference
links sends through the smtp channel to a real aiosmtpd server; reminder mail carries
``List-Unsubscribe: <https://…/u/TOKEN>, <mailto:…>`` and ``List-Unsubscribe-Post``,
transactional mail neither. The headers come with the dispatcher/smtp wiring diff; these
tests skip, saying so, until it is applied."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from duly.core.clock import VirtualClock
from duly.core.model import Recipient
from duly.core.rules.loader import load_rules_text
from duly.delivery.channels.smtp import SmtpChannel
from duly.delivery.preferences import PrefLinks, PrefSigner, unsubscribe_link_warning
from duly.delivery.rendering import Renderer
from duly.engine.dispatch import Dispatcher
from duly.engine.service import Engine, SubjectInput
from duly.store.db import make_engine
from fakes.smtp_server import smtp_server  # tests/ is on sys.path (conftest.py)

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
BASE = "https://duly.example.test"

RULES = """
timezone: UTC
rules:
  - name: invoice-reminders
    subject: invoice
    if: "status == 'sent'"
    to: [customer]
    template: plain
    steps:
      - {name: due-soon, at: "due_at - 3d"}
  - name: receipt
    subject: invoice
    on: {change: status, to: paid}
    category: transactional
    to: [customer]
    template: plain
"""


class Sink:
    def __init__(self) -> None:
        self.raw: list[bytes] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.raw.append(envelope.content)
        return "250 Message accepted"


@pytest.fixture
def smtp() -> Iterator[tuple[Sink, int]]:
    with smtp_server(Sink()) as (sink, port):
        yield sink, port


def setup(
    db_url: str, tmp: Path, port: int, mailto: str | None, base: str = BASE
) -> tuple[Engine, Dispatcher, PrefSigner]:
    (tmp / "templates").mkdir(exist_ok=True)
    (tmp / "templates" / "plain.email.txt").write_text(
        "Subject: {{ rule.name }} for {{ subject.key }}\nHello {{ recipient.name }}.\n"
    )
    rf = load_rules_text(RULES, path=str(tmp / "duly.yaml"), templates_dir=str(tmp / "templates"))
    clock = VirtualClock(T0)
    engine = Engine(rf, make_engine(db_url), clock=clock)
    chans = {"email": SmtpChannel("email", url=f"smtp://127.0.0.1:{port}", from_="b@acme.test")}
    disp = Dispatcher(engine, chans, Renderer(rf.templates_dir), send_workers=1)
    if not hasattr(disp, "preferences"):
        pytest.skip("Dispatcher.preferences comes with the dispatcher wiring diff")
    signer = PrefSigner("s3cret", clock=clock)
    disp.preferences = PrefLinks(signer=signer, base_url=base + "/", mailto=mailto)
    engine.put_recipient(Recipient("c1", name="Alice", email="alice@example.test"))
    return engine, disp, signer


def received(sink: Sink) -> list[EmailMessage]:
    return [message_from_bytes(raw, policy=default_policy) for raw in sink.raw]  # type: ignore[misc]


def test_reminder_mail_has_one_click_headers_transactional_has_none(
    db_url: str, tmp_path: Path, smtp: tuple[Sink, int]
) -> None:
    sink, port = smtp
    engine, disp, signer = setup(db_url, tmp_path, port, "unsubscribe@acme.test")
    inv = {"status": "sent", "due_at": "2026-03-10T09:00:00Z"}
    engine.upsert_subject(SubjectInput("invoice", "INV-1", inv, {"customer": "c1"}))
    engine.clock.set(datetime(2026, 3, 7, 9, 0, tzinfo=UTC))  # type: ignore[attr-defined]
    assert disp.run_once() == 1
    engine.upsert_subject(
        SubjectInput("invoice", "INV-1", {**inv, "status": "paid"}, {"customer": "c1"})
    )
    assert disp.run_once() == 1
    reminder, receipt = received(sink)
    assert reminder["X-Duly-Rule"] == "invoice-reminders"
    assert receipt["X-Duly-Rule"] == "receipt"

    # on the wire: the URIs as they are (never encoded words), folded only between them
    raw = sink.raw[0].decode("ascii")
    assert "=?" not in raw.split("\r\n\r\n", 1)[0].split("List-Unsubscribe:", 1)[1][:600]
    value = reminder["List-Unsubscribe"]
    https, mailto = (u.strip().strip("<>") for u in value.split(","))
    assert https.startswith(BASE + "/u/")
    claim = signer.loads(https.rsplit("/", 1)[1])
    assert (claim.recipient, claim.rule, claim.category) == ("c1", "invoice-reminders", "reminder")
    assert mailto.startswith("mailto:unsubscribe@acme.test?subject=")
    assert signer.loads(unquote(mailto.split("subject=", 1)[1]).split()[-1]) == claim
    assert reminder["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    assert receipt["List-Unsubscribe"] is None
    assert receipt["List-Unsubscribe-Post"] is None


def test_without_a_mailto_address_only_the_https_uri(
    db_url: str, tmp_path: Path, smtp: tuple[Sink, int]
) -> None:
    sink, port = smtp
    engine, disp, signer = setup(db_url, tmp_path, port, "")
    inv = {"status": "sent", "due_at": "2026-03-10T09:00:00Z"}
    engine.upsert_subject(SubjectInput("invoice", "INV-2", inv, {"customer": "c1"}))
    engine.clock.set(datetime(2026, 3, 7, 9, 0, tzinfo=UTC))  # type: ignore[attr-defined]
    assert disp.run_once() == 1
    (msg,) = received(sink)
    value = msg["List-Unsubscribe"]
    assert value.startswith(f"<{BASE}/u/") and value.endswith(">") and "," not in value
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_an_http_base_url_keeps_the_link_but_offers_no_one_click(
    db_url: str, tmp_path: Path, smtp: tuple[Sink, int]
) -> None:
    """RFC 8058 one-click needs an https URI: over http the link stays (a person can still
    open it), List-Unsubscribe-Post is left out so no mailbox provider POSTs to it."""
    sink, port = smtp
    base = "http://duly.example.test"
    engine, disp, signer = setup(db_url, tmp_path, port, "unsubscribe@acme.test", base=base)
    inv = {"status": "sent", "due_at": "2026-03-10T09:00:00Z"}
    engine.upsert_subject(SubjectInput("invoice", "INV-3", inv, {"customer": "c1"}))
    engine.clock.set(datetime(2026, 3, 7, 9, 0, tzinfo=UTC))  # type: ignore[attr-defined]
    assert disp.run_once() == 1
    (msg,) = received(sink)
    http, mailto = (u.strip().strip("<>") for u in msg["List-Unsubscribe"].split(","))
    assert http.startswith(base + "/u/") and mailto.startswith("mailto:unsubscribe@acme.test")
    assert signer.loads(http.rsplit("/", 1)[1]).recipient == "c1"
    assert msg["List-Unsubscribe-Post"] is None


@pytest.mark.parametrize(
    ("base", "types", "warned"),
    [
        ("http://duly.example.test", ["smtp"], True),
        ("HTTP://duly.example.test", ["outbox", "smtp"], True),
        ("https://duly.example.test", ["smtp"], False),
        ("http://127.0.0.1:8000", ["outbox"], False),  # nothing leaves: nobody to mislead
        ("http://duly.example.test", [], False),
    ],
)
def test_the_start_warning_when_unsubscribe_links_would_be_http(
    base: str, types: list[str], warned: bool
) -> None:
    text = unsubscribe_link_warning(base, types)
    if not warned:
        assert text is None
        return
    assert text is not None
    assert base in text and "DULY_BASE_URL" in text and "https" in text
    assert "List-Unsubscribe-Post" in text
