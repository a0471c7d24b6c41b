"""The engine and dispatcher against a real database (SQLite and PostgreSQL) and a real SMTP
server (aiosmtpd): exactly once, leases, retries, policies, bad data."""

from __future__ import annotations

import threading
import time as _time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message as EmailMessage
from pathlib import Path

import pytest
import sqlalchemy as sa

from duly.core.clock import SystemClock, VirtualClock
from duly.core.errors import UnknownSubject
from duly.core.model import Recipient
from duly.core.rules.loader import load_rules_text
from duly.delivery.channels.smtp import SmtpChannel
from duly.delivery.rendering import Renderer
from duly.engine.dispatch import Dispatcher, jitter
from duly.engine.service import Engine, SubjectInput
from duly.store.db import make_engine
from duly.store.tables import deliveries, delivery_log, subject_errors
from fakes.smtp_server import smtp_server  # tests/ is on sys.path (conftest.py)

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)  # a Monday

RULES = """
timezone: Europe/London
rules:
  - name: invoice-reminders
    subject: invoice
    if: "status == 'sent'"
    to: [customer]
    steps:
      - name: due-soon
        at: "due_at - 3d"
        template: plain
      - name: overdue
        at: "due_at + 1d"
        template: plain
  - name: receipt
    subject: invoice
    on: {change: status, to: paid}
    category: transactional
    to: [customer]
    template: plain
"""


class Sink:
    """aiosmtpd handler: records messages; answers RCPT with scripted codes."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.rcpt_codes: list[str] = []  # consumed one per RCPT; empty → 250
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: ANN001, ANN201
        with self.lock:
            code = self.rcpt_codes.pop(0) if self.rcpt_codes else "250 OK"
        if code.startswith("250"):
            envelope.rcpt_tos.append(address)
        return code

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, ANN201
        with self.lock:
            self.messages.append(message_from_bytes(envelope.content))
        return "250 Message accepted"


@pytest.fixture
def smtp() -> Iterator[tuple[Sink, int]]:
    with smtp_server(Sink()) as (sink, port):
        yield sink, port


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    d = tmp_path / "templates"
    d.mkdir()
    (d / "plain.email.txt").write_text(
        "Subject: {{ rule.name }} {{ step.name or '' }} for {{ subject.key }}\n"
        "Hello {{ recipient.name }}, about {{ subject.key }}.\n"
    )
    (d / "broken.email.txt").write_text("Subject: x\n{{ attributes.nope.deeper }}\n")
    return tmp_path


def make(db_url: str, tmp: Path, rules: str, clock, port: int | None = None, **kw):  # noqa: ANN001, ANN003, ANN201
    rf = load_rules_text(rules, path=str(tmp / "duly.yaml"), templates_dir=str(tmp / "templates"))
    db = make_engine(db_url)
    engine = Engine(rf, db, clock=clock)
    chans = {}
    if port is not None:
        chans["email"] = SmtpChannel(
            "email", url=f"smtp://127.0.0.1:{port}", from_="billing@acme.test"
        )
    disp = Dispatcher(
        engine, chans, Renderer(rf.templates_dir), send_workers=kw.pop("workers", 1), **kw
    )
    return engine, disp


def alice(engine: Engine, **kw) -> None:  # noqa: ANN003
    engine.put_recipient(
        Recipient("c1", name="Alice", email="alice@example.test", timezone="Europe/London", **kw)
    )


def rows(engine: Engine) -> list[dict]:
    with engine.db.connect() as c:
        return [
            dict(r) for r in c.execute(sa.select(deliveries).order_by(deliveries.c.id)).mappings()
        ]


def test_sends_on_time_exactly_once_with_identity_headers(db_url, templates, smtp) -> None:
    sink, port = smtp
    clock = VirtualClock(T0)
    engine, disp = make(db_url, templates, RULES, clock, port)
    alice(engine)
    engine.upsert_subject(
        SubjectInput(
            "invoice",
            "INV-1",
            {"status": "sent", "due_at": "2026-03-10T09:00:00Z"},
            {"customer": "c1"},
        )
    )
    assert disp.run_once() == 0  # nothing due yet
    clock.set(datetime(2026, 3, 7, 9, 0, tzinfo=UTC))
    assert disp.run_once() == 1
    assert disp.run_once() == 0  # never twice
    (msg,) = sink.messages
    assert msg["Subject"] == "invoice-reminders due-soon for INV-1"
    assert msg["To"] == "Alice <alice@example.test>"
    row = next(r for r in rows(engine) if r["step"] == "due-soon")
    assert row["state"] == "sent" and row["attempts"] == 1
    assert msg["Message-ID"].strip("<>").startswith(row["message_id"])
    assert msg["X-Duly-Rule"] == "invoice-reminders"
    assert msg["X-Duly-Subject"] == "invoice/INV-1"


def test_two_dispatchers_never_send_the_same_delivery_twice(db_url, templates, smtp) -> None:
    sink, port = smtp
    clock = VirtualClock(T0)
    engine, d1 = make(db_url, templates, RULES, clock, port, batch_size=7)
    _, d2 = make(db_url, templates, RULES, clock, port, batch_size=7)
    alice(engine)
    n = 60
    engine.upsert_subjects(
        [
            SubjectInput(
                "invoice",
                f"INV-{i}",
                {"status": "sent", "due_at": "2026-03-10T09:00:00Z"},
                {"customer": "c1"},
            )
            for i in range(n)
        ]
    )
    clock.set(datetime(2026, 3, 7, 9, 0, tzinfo=UTC))
    errors: list[BaseException] = []

    def drain(d: Dispatcher) -> None:
        try:
            while d.run_once():
                pass
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    ts = [threading.Thread(target=drain, args=(d,)) for d in (d1, d2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors
    subjects = sorted(m["X-Duly-Subject"] for m in sink.messages)
    assert len(subjects) == n and len(set(subjects)) == n
    assert d1.stats.sent + d2.stats.sent == n


def test_a_crashed_workers_claims_are_taken_over_after_the_lease_with_the_same_message_id(
    db_url, templates, smtp
) -> None:
    sink, port = smtp
    clock = VirtualClock(T0)
    engine, disp = make(db_url, templates, RULES, clock, port, lease=timedelta(minutes=5))
    alice(engine)
    engine.upsert_subject(
        SubjectInput(
            "invoice",
            "INV-1",
            {"status": "sent", "due_at": "2026-03-10T09:00:00Z"},
            {"customer": "c1"},
        )
    )
    clock.set(datetime(2026, 3, 7, 9, 0, tzinfo=UTC))
    from duly.store.db import write_transaction

    with write_transaction(engine.db) as conn:  # a worker claims, then dies before recording
        (claimed,) = engine.store.claim_due(
            conn, clock.now(), "dead-worker", timedelta(minutes=5), 10
        )
    assert disp.run_once() == 0  # the lease still holds
    clock.set(clock.now() + timedelta(minutes=5, seconds=1))
    assert disp.run_once() == 1
    (msg,) = sink.messages
    assert msg["X-Duly-Delivery"] == str(claimed.id)
    assert disp.message_ids(claimed.identity) in msg["Message-ID"]
    assert rows(engine)[0]["state"] == "sent"


def test_temporary_failures_retry_with_backoff_then_succeed(db_url, templates, smtp) -> None:
    sink, port = smtp
    sink.rcpt_codes = ["451 4.3.0 try later", "451 4.3.0 try later"]
    clock = VirtualClock(T0)
    engine, disp = make(db_url, templates, RULES, clock, port)
    alice(engine)
    engine.upsert_subject(
        SubjectInput(
            "invoice",
            "INV-1",
            {"status": "sent", "due_at": "2026-03-10T09:00:00Z"},
            {"customer": "c1"},
        )
    )
    t = datetime(2026, 3, 7, 9, 0, tzinfo=UTC)
    clock.set(t)
    disp.run_once()
    r = rows(engine)[0]
    assert r["state"] == "pending" and r["attempts"] == 1 and "451" in r["last_error"]
    ident = disp_identity(r)
    wait1 = r["due_at"] - t
    # 60 s × the identity's jitter factor (databases keep microseconds)
    assert abs((wait1 - timedelta(seconds=60 * jitter(ident, 1))).total_seconds()) < 0.001
    assert timedelta(seconds=54) <= wait1 <= timedelta(seconds=66)
    clock.set(r["due_at"])
    disp.run_once()
    r2 = rows(engine)[0]
    wait2 = r2["due_at"] - r["due_at"]
    assert timedelta(seconds=108) <= wait2 <= timedelta(seconds=132)
    clock.set(r2["due_at"])
    disp.run_once()
    r3 = rows(engine)[0]
    assert r3["state"] == "sent" and r3["attempts"] == 3
    with engine.db.connect() as c:
        log = (
            c.execute(
                sa.select(delivery_log)
                .where(delivery_log.c.kind == "attempt")
                .order_by(delivery_log.c.id)
            )
            .mappings()
            .all()
        )
    assert [(x["attempt"], bool(x["error"])) for x in log] == [(1, True), (2, True), (3, False)]
    assert len(sink.messages) == 1


def disp_identity(r: dict):  # noqa: ANN201
    from duly.core.planner import Identity

    return Identity.from_db(
        r["rule"], r["step"], r["occurrence"], r["subject"], r["recipient"], r["channel"]
    )


def test_retries_exhausted_and_permanent_errors_fail(db_url, templates, smtp) -> None:
    sink, port = smtp
    clock = VirtualClock(T0)
    engine, disp = make(db_url, templates, RULES, clock, port)
    alice(engine)
    sink.rcpt_codes = ["550 5.1.1 no such user"]
    engine.upsert_subject(
        SubjectInput(
            "invoice",
            "INV-1",
            {"status": "sent", "due_at": "2026-03-10T09:00:00Z"},
            {"customer": "c1"},
        )
    )
    clock.set(datetime(2026, 3, 7, 9, 0, tzinfo=UTC))
    disp.run_once()
    r = rows(engine)[0]
    assert (r["state"], r["reason"], r["attempts"]) == ("failed", "permanent_error", 1)
    assert "550" in r["last_error"]
    # 4 temporary failures: the first try and 3 retries → retries_exhausted (another
    # customer: alice's address is suppressed by the 550 above)
    engine.put_recipient(Recipient("c2", name="Bo", email="bo@example.test"))
    engine.upsert_subject(
        SubjectInput(
            "invoice",
            "INV-2",
            {"status": "sent", "due_at": "2026-03-10T09:00:00Z"},
            {"customer": "c2"},
        )
    )
    clock.set(datetime(2026, 3, 11, 9, 0, tzinfo=UTC))  # overdue steps of INV-1 and INV-2
    sink.rcpt_codes = ["421 4.4.2 busy"] * 4
    for _ in range(4):
        disp.run_once()
        pending = [x for x in rows(engine) if x["state"] == "pending"]
        if pending:
            clock.set(pending[0]["due_at"])
    r = next(x for x in rows(engine) if x["step"] == "overdue" and x["subject"] == "invoice/INV-2")
    assert (r["state"], r["reason"], r["attempts"]) == ("failed", "retries_exhausted", 4)
    a = next(x for x in rows(engine) if x["step"] == "overdue" and x["subject"] == "invoice/INV-1")
    assert (a["state"], a["reason"]) == ("skipped", "suppressed")
    assert sink.messages == []


def test_a_render_error_fails_only_its_delivery(db_url, templates, smtp) -> None:
    sink, port = smtp
    rules = RULES.replace(
        "template: plain\n      - name: overdue", "template: broken\n      - name: overdue"
    )
    clock = VirtualClock(T0)
    engine, disp = make(db_url, templates, rules, clock, port)
    alice(engine)
    engine.upsert_subjects(
        [
            SubjectInput(
                "invoice",
                k,
                {"status": "sent", "due_at": "2026-03-10T09:00:00Z"},
                {"customer": "c1"},
            )
            for k in ("A", "B")
        ]
    )
    clock.set(datetime(2026, 3, 7, 9, 0, tzinfo=UTC))
    disp.run_once()
    assert {
        (r["subject"], r["state"], r["reason"]) for r in rows(engine) if r["step"] == "due-soon"
    } == {("invoice/A", "failed", "render_error"), ("invoice/B", "failed", "render_error")}
    assert "broken" in rows(engine)[0]["last_error"]
    clock.set(datetime(2026, 3, 11, 9, 0, tzinfo=UTC))
    disp.run_once()
    assert len(sink.messages) == 2  # the overdue step renders fine


def test_grace_skips_stale_reminders_but_sends_transactional(db_url, templates, smtp) -> None:
    sink, port = smtp
    clock = VirtualClock(T0)
    engine, disp = make(db_url, templates, RULES, clock, port)
    alice(engine)
    engine.upsert_subject(
        SubjectInput(
            "invoice",
            "INV-1",
            {"status": "sent", "due_at": "2026-03-10T09:00:00Z"},
            {"customer": "c1"},
        )
    )
    engine.upsert_subject(
        SubjectInput(
            "invoice",
            "INV-2",
            {"status": "paid", "due_at": "2026-03-10T09:00:00Z"},
            {"customer": "c1"},
        )
    )
    # the engine was down for two days
    clock.set(datetime(2026, 3, 7, 9, 0, tzinfo=UTC) + timedelta(hours=13))
    disp.run_once()
    got = {(r["rule"], r["step"], r["state"], r["reason"]) for r in rows(engine)}
    assert ("invoice-reminders", "due-soon", "skipped", "missed") in got
    assert ("receipt", "", "sent", None) in got
    assert [m["X-Duly-Rule"] for m in sink.messages] == ["receipt"]


def test_consent_address_and_condition_are_checked_at_send_time(db_url, templates, smtp) -> None:
    sink, port = smtp
    rules = RULES.replace(
        "if: \"status == 'sent'\"", "if: \"status == 'sent' and due_at > now - 30d\""
    )
    clock = VirtualClock(T0)
    engine, disp = make(db_url, templates, rules, clock, port)
    engine.put_recipient(Recipient("optout", email="o@example.test", consent={"reminder": False}))
    engine.put_recipient(Recipient("noaddr"))
    engine.put_recipient(Recipient("ok", email="ok@example.test"))
    for k, who in (("A", "optout"), ("B", "noaddr"), ("C", "ok"), ("D", "ghost")):
        engine.upsert_subject(
            SubjectInput(
                "invoice",
                k,
                {"status": "sent", "due_at": "2026-03-10T09:00:00Z"},
                {"customer": who},
            )
        )
    clock.set(datetime(2026, 3, 7, 9, 0, tzinfo=UTC))
    disp.run_once()
    got = {r["subject"]: (r["state"], r["reason"]) for r in rows(engine) if r["step"] == "due-soon"}
    assert got == {
        "invoice/A": ("skipped", "no_consent"),
        "invoice/B": ("skipped", "no_address"),
        "invoice/C": ("sent", None),
        "invoice/D": ("skipped", "no_address"),
    }
    # receipts are transactional: sent even to the one who opted out of reminders
    engine.upsert_subject(
        SubjectInput(
            "invoice",
            "A",
            {"status": "paid", "due_at": "2026-03-10T09:00:00Z"},
            {"customer": "optout"},
        )
    )
    disp.run_once()
    assert any(m["To"] == "o@example.test" for m in sink.messages)
    # the condition depends on `now`: true when planned, false by the time it is due
    clock.set(datetime(2026, 4, 12, 0, 0, tzinfo=UTC))
    engine.upsert_subject(
        SubjectInput(
            "invoice", "E", {"status": "sent", "due_at": "2026-04-14T09:00:00Z"}, {"customer": "ok"}
        )
    )
    clock.set(datetime(2026, 5, 20, 9, 0, tzinfo=UTC))
    # hold on: due-soon 11 April is past already; overdue 15 April 09:00 now 35 days late → grace
    disp.run_once()
    e = {r["step"]: (r["state"], r["reason"]) for r in rows(engine) if r["subject"] == "invoice/E"}
    assert e["due-soon"] == ("skipped", "past")
    assert e["overdue"] == ("skipped", "condition_false")


def test_min_gap_defers_the_second_rung(db_url, templates, smtp) -> None:
    sink, port = smtp
    rules = RULES.replace(
        "    to: [customer]\n    steps:", "    to: [customer]\n    min_gap: 2d\n    steps:", 1
    )
    rules = rules.replace('at: "due_at + 1d"', 'at: "due_at - 3d"')  # both rungs at once
    clock = VirtualClock(T0)
    engine, disp = make(db_url, templates, rules, clock, port)
    alice(engine)
    engine.upsert_subject(
        SubjectInput(
            "invoice",
            "INV-1",
            {"status": "sent", "due_at": "2026-03-10T09:00:00Z"},
            {"customer": "c1"},
        )
    )
    t = datetime(2026, 3, 7, 9, 0, tzinfo=UTC)
    clock.set(t)
    disp.run_once()
    assert len(sink.messages) == 1
    waiting = [r for r in rows(engine) if r["state"] == "pending"]
    assert len(waiting) == 1 and waiting[0]["due_at"] == t + timedelta(days=2)
    clock.set(t + timedelta(days=2))
    disp.run_once()
    assert len(sink.messages) == 2


def test_bad_subject_data_is_recorded_and_does_not_block_others(db_url, templates, smtp) -> None:
    sink, port = smtp
    clock = VirtualClock(T0)
    engine, disp = make(db_url, templates, RULES, clock, port)
    alice(engine)
    results = engine.upsert_subjects(
        [
            SubjectInput(
                "invoice", "BAD", {"status": "sent", "due_at": "the 10th"}, {"customer": "c1"}
            ),
            SubjectInput(
                "invoice",
                "GOOD",
                {"status": "sent", "due_at": "2026-03-10T09:00:00Z"},
                {"customer": "c1"},
            ),
        ]
    )
    assert results[0].problems and "the 10th" in results[0].problems[0]
    with engine.db.connect() as c:
        errs = c.execute(sa.select(subject_errors)).mappings().all()
    assert [(e["subject"], e["field"]) for e in errs] == [("invoice/BAD", "due_at")] * len(errs)
    clock.set(datetime(2026, 3, 7, 9, 0, tzinfo=UTC))
    disp.run_once()
    assert [m["X-Duly-Subject"] for m in sink.messages] == ["invoice/GOOD"]


def test_an_event_for_an_unknown_subject_is_refused_and_changes_nothing(db_url, templates) -> None:
    rules = (
        RULES
        + """
  - name: viewed
    subject: invoice
    on: invoice.viewed
    to: [customer]
    template: plain
"""
    )
    engine, _ = make(db_url, templates, rules, VirtualClock(T0))
    with pytest.raises(UnknownSubject) as exc:
        engine.post_event("e1", "invoice.viewed", "invoice/NOPE", {})
    assert exc.value.field == "subject"
    assert rows(engine) == []
    alice(engine)
    engine.upsert_subject(SubjectInput("invoice", "I", {"status": "draft"}, {"customer": "c1"}))
    assert engine.post_event("e1", "invoice.viewed", "invoice/I", {}) is True
    assert engine.post_event("e1", "invoice.viewed", "invoice/I", {}) is False  # idempotent
    assert len([r for r in rows(engine) if r["rule"] == "viewed"]) == 1


def test_idle_dispatcher_sends_within_a_second_of_the_planned_time(db_url, templates, smtp) -> None:
    """No fixed polling: the dispatcher sleeps until the next due time or until woken."""
    sink, port = smtp
    engine, disp = make(db_url, templates, RULES, SystemClock(), port)
    alice(engine)
    th = threading.Thread(target=disp.run_forever, daemon=True)
    th.start()
    try:
        _time.sleep(0.3)  # the dispatcher is idle, asleep with nothing planned
        planned = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=5)
        engine.upsert_subject(
            SubjectInput(
                "invoice",
                "NOW",
                {"status": "sent", "due_at": (planned + timedelta(days=3)).isoformat()},
                {"customer": "c1"},
            )
        )
        deadline = _time.monotonic() + 15
        while not sink.messages and _time.monotonic() < deadline:
            _time.sleep(0.01)
        got = datetime.now(UTC)
        assert sink.messages, "nothing was sent"
        sent: list[dict] = []
        while not sent and _time.monotonic() < deadline:  # recorded just after the send
            sent = [x for x in rows(engine) if x["state"] == "sent"]
        (r,) = sent
        late = (r["sent_at"] - planned).total_seconds()
        assert 0 <= late < 1.0, f"sent {late:.3f}s after its time"
        assert (got - planned).total_seconds() < 1.5
    finally:
        disp.stop()
        th.join(10)
    assert not th.is_alive()


def test_batched_deliveries_go_out_as_one_email(db_url, templates, smtp) -> None:
    sink, port = smtp
    rules = RULES.replace(
        "    to: [customer]\n    steps:",
        "    to: [customer]\n    batch: {window: 2h}\n    steps:",
        1,
    )
    (templates / "templates" / "plain.email.txt").write_text(
        "Subject: {{ subjects|length }} invoices\n{% for s in subjects %}{{ s.key }}\n{% endfor %}"
    )
    clock = VirtualClock(T0)
    engine, disp = make(db_url, templates, rules, clock, port)
    alice(engine)
    engine.upsert_subjects(
        [
            SubjectInput("invoice", k, {"status": "sent", "due_at": due}, {"customer": "c1"})
            for k, due in (
                ("A", "2026-03-10T09:00:00Z"),
                ("B", "2026-03-10T10:00:00Z"),
                ("C", "2026-03-10T10:30:00Z"),
            )
        ]
    )
    clock.set(datetime(2026, 3, 7, 9, 0, tzinfo=UTC))
    assert disp.run_once() == 1  # one claimed; its batch mates join it
    (msg,) = sink.messages
    assert msg["Subject"] == "3 invoices"
    assert msg["X-Duly-Batch-Size"] == "3"
    got = [r for r in rows(engine) if r["step"] == "due-soon"]
    assert {r["state"] for r in got} == {"sent"}
    assert len({r["message_id"] for r in got}) == 1


def test_smtp_550_on_rcpt_suppresses_the_address_until_cleared(db_url, templates, smtp) -> None:
    sink, port = smtp
    sink.rcpt_codes = ["550 5.1.1 no such user"]
    clock = VirtualClock(T0)
    engine, disp = make(db_url, templates, RULES, clock, port)
    alice(engine)
    engine.upsert_subject(
        SubjectInput(
            "invoice",
            "INV-1",
            {"status": "sent", "due_at": "2026-03-10T09:00:00Z"},
            {"customer": "c1"},
        )
    )
    clock.set(datetime(2026, 3, 7, 9, 0, tzinfo=UTC))
    disp.run_once()
    clock.set(datetime(2026, 3, 11, 9, 0, tzinfo=UTC))
    disp.run_once()
    got = {r["step"]: (r["state"], r["reason"]) for r in rows(engine)}
    assert got == {"due-soon": ("failed", "permanent_error"), "overdue": ("skipped", "suppressed")}
    from duly.store.db import write_transaction

    with write_transaction(engine.db) as c:
        (sup,) = engine.store.list_suppressions(c)
        assert sup["address"] == "alice@example.test" and "550" in sup["reason"]
        assert engine.store.clear_suppression(c, "ALICE@example.test", clock.now()) == 1
    engine.upsert_subject(
        SubjectInput(
            "invoice",
            "INV-2",
            {"status": "sent", "due_at": "2026-03-20T09:00:00Z"},
            {"customer": "c1"},
        )
    )
    clock.set(datetime(2026, 3, 17, 9, 0, tzinfo=UTC))
    disp.run_once()
    assert len(sink.messages) == 1
