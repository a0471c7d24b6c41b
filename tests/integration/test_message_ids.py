"""Message ids: stable for a delivery identity within one installation, different between
installations (keyed with the installation's secret), and the same id for the same identity
whichever process computes it."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from duly.core.clock import VirtualClock
from duly.core.model import Recipient
from duly.core.planner import Identity
from duly.core.rules.loader import load_rules_text
from duly.delivery.ack import SECRET_ENV
from duly.delivery.channels.smtp import SmtpChannel
from duly.delivery.ids import MessageIds, message_id_for
from duly.delivery.rendering import Renderer
from duly.engine.dispatch import Dispatcher
from duly.engine.service import Engine, SubjectInput
from duly.store.db import make_engine
from duly.store.tables import deliveries
from fakes.smtp_server import smtp_server  # tests/ is on sys.path (conftest.py)

IDENT = Identity("invoice-due", "overdue", 0, "invoice/INV-1", "ada", "email")
OTHER = Identity("invoice-due", "overdue", 1, "invoice/INV-1", "ada", "email")


def test_an_id_is_stable_for_an_identity_and_keyed() -> None:
    a = message_id_for(IDENT, b"installation-a")
    assert re.fullmatch(r"[0-9a-f]{32}", a)
    assert message_id_for(IDENT, b"installation-a") == a
    assert message_id_for(OTHER, b"installation-a") != a
    assert message_id_for(IDENT, b"installation-b") != a


def test_the_key_comes_from_the_installations_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "one-secret")
    one = MessageIds()(IDENT)
    assert MessageIds()(IDENT) == one  # another process of the same installation
    assert MessageIds(secret="one-secret")(IDENT) == one
    monkeypatch.setenv(SECRET_ENV, "another-secret")
    assert MessageIds()(IDENT) != one


def test_two_installations_without_a_configured_secret_differ(
    monkeypatch: pytest.MonkeyPatch, sqlite_template: Path, tmp_path: Path
) -> None:
    """Each database generates its own secret once; every process reading it agrees."""
    monkeypatch.delenv(SECRET_ENV, raising=False)
    dbs = []
    for name in ("a.db", "b.db"):
        shutil.copyfile(sqlite_template, tmp_path / name)
        dbs.append(make_engine(f"sqlite:///{tmp_path / name}"))
    try:
        a, b = (MessageIds(db=db)(IDENT) for db in dbs)
        assert a != b
        again = make_engine(f"sqlite:///{tmp_path / 'a.db'}")  # another process of a
        assert MessageIds(db=again)(IDENT) == a
        again.dispose()
    finally:
        for db in dbs:
            db.dispose()


# --------------------------------------------------------------------------- on the wire

RULES = """
timezone: UTC
rules:
  - name: invoice-due
    subject: invoice
    to: [customer]
    template: plain
    steps:
      - {name: overdue, at: "due_at"}
"""


class Sink:
    def __init__(self) -> None:
        self.raw: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.raw.append(envelope.content)
        return "250 Message accepted"


@pytest.fixture
def smtp() -> Iterator[tuple[Sink, int]]:
    with smtp_server(Sink()) as (sink, port):
        yield sink, port


def test_a_sent_email_carries_the_installations_keyed_id_at_the_senders_domain(
    db_url: str, tmp_path: Path, smtp: tuple[Sink, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dispatcher stores MessageIds' id (32 hex digits, as before) and the smtp channel
    writes it <id@domain>: stable for the identity, keyed with this installation's secret."""
    monkeypatch.setenv(SECRET_ENV, "this-installation")
    sink, port = smtp
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "plain.email.txt").write_text("Subject: due\nPay.\n")
    rf = load_rules_text(
        RULES, path=str(tmp_path / "duly.yaml"), templates_dir=str(tmp_path / "templates")
    )
    clock = VirtualClock(datetime(2026, 3, 2, 8, 0, tzinfo=UTC))
    engine = Engine(rf, make_engine(db_url), clock=clock)
    email = SmtpChannel("email", url=f"smtp://127.0.0.1:{port}", from_="Billing <b@acme.test>")
    disp = Dispatcher(engine, {"email": email}, Renderer(rf.templates_dir), send_workers=1)
    engine.put_recipient(Recipient("c1", name="Alice", email="alice@example.test"))
    engine.upsert_subject(
        SubjectInput("invoice", "INV-1", {"due_at": "2026-03-02T09:00:00Z"}, {"customer": "c1"})
    )
    clock.set(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    assert disp.run_once() == 1
    [raw] = sink.raw
    msg = message_from_bytes(raw, policy=default_policy)
    with engine.db.connect() as conn:
        [row] = conn.execute(sa.select(deliveries)).mappings().all()
    ident = Identity.from_db(
        row["rule"],
        row["step"],
        row["occurrence"],
        row["subject"],
        row["recipient"],
        row["channel"],
    )
    expected = MessageIds(secret="this-installation")(ident)
    assert row["message_id"] == expected
    assert msg["Message-ID"] == f"<{expected}@acme.test>"
    assert msg["Message-ID"].defects == ()
    engine.db.dispose()
