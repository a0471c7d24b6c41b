"""One-off reminders through the engine and dispatcher."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from duly.core.clock import VirtualClock
from duly.core.errors import InvalidInput, NotFound, UnknownSubject
from duly.core.model import Recipient
from duly.core.rules.loader import load_rules_text
from duly.delivery.channels.outbox import OutboxChannel
from duly.engine.dispatch import Dispatcher
from duly.engine.service import Conflict, Engine, ReminderInput, SubjectInput
from duly.store.db import make_engine
from duly.store.tables import deliveries

T0 = datetime(2026, 6, 1, 9, tzinfo=UTC)


@pytest.fixture
def env(db_url: str):  # noqa: ANN201
    rf = load_rules_text("rules: []\n", check_templates=False)
    db = make_engine(db_url)
    clock = VirtualClock(T0)
    eng = Engine(rf, db, clock=clock)
    disp = Dispatcher(eng, {"email": OutboxChannel("email")}, None, send_workers=1)
    for p in ("a", "b"):
        eng.put_recipient(Recipient(p, email=f"{p}@example.test"))
    yield eng, disp, clock
    db.dispose()


def states(eng: Engine) -> list[tuple[str, str, str | None]]:
    with eng.db.connect() as c:
        return [
            tuple(r)
            for r in c.execute(  # type: ignore[misc]
                sa.select(deliveries.c.recipient, deliveries.c.state, deliveries.c.reason).order_by(
                    deliveries.c.id
                )
            )
        ]


def test_a_reminder_goes_to_every_recipient_on_every_channel_at_its_time(env) -> None:  # noqa: ANN001
    eng, disp, clock = env
    rid = eng.create_reminder(
        ReminderInput("Site visit", "Bring the keys", T0 + timedelta(hours=1), ["a", "b"])
    )
    assert disp.run_once() == 0
    clock.set(T0 + timedelta(hours=1))
    assert disp.run_once() == 2
    with eng.db.connect() as c:
        rows = c.execute(sa.select(deliveries)).mappings().all()
    assert {(r["recipient"], r["state"], r["title"], r["body_text"]) for r in rows} == {
        ("a", "sent", "Site visit", "Bring the keys"),
        ("b", "sent", "Site visit", "Bring the keys"),
    }
    assert all(r["occurrence"] == str(rid) for r in rows)
    with pytest.raises(Conflict):
        eng.update_reminder(rid, ReminderInput("x", "y", T0 + timedelta(hours=3), ["a"]))
    with pytest.raises(Conflict):
        eng.delete_reminder(rid)


def test_edit_moves_and_re_addresses_and_delete_cancels(env) -> None:  # noqa: ANN001
    eng, disp, clock = env
    rid = eng.create_reminder(ReminderInput("Call", "", T0 + timedelta(hours=1), ["a", "b"]))
    eng.update_reminder(rid, ReminderInput("Call", "", T0 + timedelta(hours=2), ["a"]))
    assert states(eng) == [("a", "pending", None), ("b", "cancelled", "recipient_removed")]
    clock.set(T0 + timedelta(hours=1))
    assert disp.run_once() == 0  # moved to 11:00
    rid2 = eng.create_reminder(ReminderInput("Other", "", T0 + timedelta(hours=5), ["b"]))
    eng.delete_reminder(rid2)
    assert states(eng)[-1] == ("b", "cancelled", "manual")
    with pytest.raises(NotFound):
        eng.delete_reminder(rid2)
    clock.set(T0 + timedelta(hours=2))
    assert disp.run_once() == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"send_at": T0 - timedelta(minutes=1)}, "send_at"),
        ({"channels": []}, "channels"),
        ({"channels": ["pigeon"]}, "channels"),
        ({"recipients": []}, "recipients"),
        ({"title": " "}, "title"),
        ({"category": "spam"}, "category"),
        ({"subject": "job/none"}, "subject"),
    ],
)
def test_validation_names_the_field(env, change: dict, field: str) -> None:  # noqa: ANN001
    eng, _, _ = env
    base = {"title": "t", "message": "m", "send_at": T0 + timedelta(hours=1), "recipients": ["a"]}
    with pytest.raises(InvalidInput) as exc:
        eng.create_reminder(ReminderInput(**{**base, **change}))
    assert exc.value.field == field
    assert states(eng) == []
    if field == "subject":
        assert isinstance(exc.value, UnknownSubject)
        eng.upsert_subject(SubjectInput("job", "none"))
        assert eng.create_reminder(ReminderInput(**{**base, **change}))


def test_a_recipient_or_channel_named_twice_is_one_delivery(env) -> None:  # noqa: ANN001
    eng, _, _ = env
    rid = eng.create_reminder(
        ReminderInput("x", "", T0 + timedelta(hours=1), ["a", "a", "b"], ["email", "email"])
    )
    assert sorted(s[0] for s in states(eng)) == ["a", "b"]
    eng.update_reminder(rid, ReminderInput("x", "", T0 + timedelta(hours=2), ["b", "b"]))
    assert [s for s in states(eng) if s[1] == "pending"] == [("b", "pending", None)]
