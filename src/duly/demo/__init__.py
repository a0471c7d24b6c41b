"""Demo data for `duly serve` with the bundled rules: timed so the first messages go out
within a minute of starting."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from duly.engine.service import Engine, SubjectInput
from duly.model import Recipient


def _iso(t):  # noqa: ANN001, ANN202
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def seed(engine: Engine) -> int:
    """Load demo recipients and subjects unless the database already has subjects.
    Returns the number of subjects loaded."""
    from duly.store.tables import subjects

    with engine.db.connect() as conn:
        if conn.execute(sa.select(sa.func.count()).select_from(subjects)).scalar():
            return 0
    now = engine.clock.now().replace(microsecond=0)
    engine.put_recipient(
        Recipient(
            id="alice",
            name="Alice Moreau",
            email="alice@example.com",
            timezone="Europe/London",
            locale="en_GB",
        )
    )
    engine.put_recipient(
        Recipient(
            id="bob",
            name="Bob Chen",
            email="bob@example.com",
            timezone="America/New_York",
            locale="en_US",
        )
    )
    items = [
        # due-soon (due_at - 3d) falls 15 s from now
        SubjectInput(
            "invoice",
            "INV-1001",
            {
                "status": "sent",
                "amount": 420.0,
                "currency": "GBP",
                "due_at": _iso(now + timedelta(days=3, seconds=15)),
            },
            {"customer": "alice"},
        ),
        # overdue (due_at + 1d) falls 35 s from now
        SubjectInput(
            "invoice",
            "INV-1002",
            {
                "status": "sent",
                "amount": 99.5,
                "currency": "USD",
                "due_at": _iso(now - timedelta(days=1) + timedelta(seconds=35)),
            },
            {"customer": "bob"},
        ),
        # created paid: the payment receipt goes out at once
        SubjectInput(
            "invoice",
            "INV-1003",
            {
                "status": "paid",
                "amount": 1200,
                "currency": "EUR",
                "due_at": _iso(now + timedelta(days=10)),
            },
            {"customer": "alice"},
        ),
        # the 2-hour reminder falls 50 s from now; the day-before one is already past
        SubjectInput(
            "appointment",
            "APT-7",
            {
                "status": "confirmed",
                "service": "Dental check-up",
                "duration_minutes": 30,
                "starts_at": _iso(now + timedelta(hours=2, seconds=50)),
            },
            {"client": "bob"},
        ),
        # a week out: its reminders stay planned
        SubjectInput(
            "appointment",
            "APT-8",
            {
                "status": "confirmed",
                "service": "Haircut",
                "duration_minutes": 45,
                "starts_at": _iso(now + timedelta(days=7)),
            },
            {"client": "alice"},
        ),
    ]
    engine.upsert_subjects(items)
    return len(items)
