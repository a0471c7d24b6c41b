"""Bad input to the engine gets a clear error naming the field, and changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from duly.core.clock import VirtualClock
from duly.core.errors import InvalidInput
from duly.core.model import Recipient
from duly.core.rules.loader import load_rules_text
from duly.engine.service import Engine, SubjectInput
from duly.store.db import make_engine
from duly.store.tables import deliveries, recipients, subjects

RULES = """
rules:
  - name: r
    subject: invoice
    to: [customer]
    steps: [{name: s, at: "due_at - 1d"}]
  - name: e
    subject: invoice
    on: paid
    to: [customer]
"""


@pytest.fixture
def engine(db_url: str):  # noqa: ANN201
    rf = load_rules_text(RULES, check_templates=False)
    db = make_engine(db_url)
    eng = Engine(rf, db, clock=VirtualClock(datetime(2026, 1, 1, tzinfo=UTC)))
    eng.put_recipient(Recipient("c1", email="c1@example.test"))
    eng.upsert_subject(SubjectInput("invoice", "OK", {"due_at": "2026-02-01"}, {"customer": "c1"}))
    yield eng
    db.dispose()


def counts(eng: Engine) -> tuple[int, int, int]:
    with eng.db.connect() as c:
        return tuple(  # type: ignore[return-value]
            c.execute(sa.select(sa.func.count()).select_from(t)).scalar()
            for t in (subjects, deliveries, recipients)
        )


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda e: e.put_recipient(Recipient("x", timezone="Europe/Atlantis")), "timezone"),
        (lambda e: e.put_recipient(Recipient("")), "id"),
        (lambda e: e.put_recipient(Recipient("x" * 201)), "id"),
        (lambda e: e.upsert_subject(SubjectInput("a/b", "1")), "kind"),
        (lambda e: e.upsert_subject(SubjectInput("invoice", "")), "key"),
        (lambda e: e.upsert_subject(SubjectInput("invoice", "k" * 201)), "key"),
        (lambda e: e.upsert_subject(SubjectInput("invoice", "1", attributes=[1, 2])), "attributes"),  # type: ignore[arg-type]
        (
            lambda e: e.upsert_subject(SubjectInput("invoice", "1", recipients={"customer": 5})),
            "recipients.customer",
        ),  # type: ignore[dict-item]
        (
            lambda e: e.upsert_subjects([SubjectInput("invoice", "fine"), SubjectInput("", "bad")]),
            "kind",
        ),
        (lambda e: e.post_event("", "paid", "invoice/OK"), "id"),
        (lambda e: e.post_event("e1", "", "invoice/OK"), "name"),
        (lambda e: e.post_event("e1", "paid", "invoiceOK"), "subject"),
        (lambda e: e.post_event("e1", "paid", "invoice/NOPE"), "subject"),
        (lambda e: e.delete_subject("invoice", "NOPE"), "subject"),
        (lambda e: e.acknowledge("no-such-rule", "invoice/OK"), "rule"),
    ],
)
def test_bad_input_names_the_field_and_changes_nothing(engine: Engine, call, field: str) -> None:  # noqa: ANN001
    before = counts(engine)
    with pytest.raises(InvalidInput) as exc:
        call(engine)
    assert exc.value.field == field
    assert str(exc.value)
    assert counts(engine) == before
