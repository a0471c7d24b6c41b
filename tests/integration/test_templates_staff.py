"""Templates staff can edit, on SQLite and PostgreSQL: the shipped file is version 0 and can
be restored; a save is checked with the kind's real subjects and their recipients (sample
data only when there are none, and then the warning says so); the variables a template can
use come from the kind's recent subjects; per-locale variants are checked with their own
language."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from duly.core.model import Recipient
from duly.core.rules.loader import load_rules_text
from duly.delivery.templates import TemplateStore
from duly.engine.service import Engine, SubjectInput
from duly.store.db import make_engine

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)

SHIPPED = (
    "Subject: Invoice {{ subject.key }} is overdue\n"
    "Hello {{ recipient.name }}, {{ money(attributes.amount, attributes.currency) }} "
    "was due on {{ date(attributes.due_at) }}.\n"
)
RULES = """
timezone: Europe/London
rules:
  - name: invoice-overdue
    subject: invoice
    if: "status == 'sent'"
    to: [customer, accounts]
    at: "due_at + 1d"
"""


@pytest.fixture
def tdir(tmp_path: Path) -> Path:
    d = tmp_path / "templates"
    d.mkdir()
    (d / "invoice-overdue.email.txt").write_text(SHIPPED)
    return d


@pytest.fixture
def env(db_url: str, tmp_path: Path, tdir: Path):  # noqa: ANN201
    rf = load_rules_text(RULES, path=str(tmp_path / "duly.yaml"), templates_dir=str(tdir))
    db = make_engine(db_url)
    yield Engine(rf, db), TemplateStore(db, tdir, rules=rf)
    db.dispose()


def _invoices(engine: Engine) -> None:
    engine.put_recipient(Recipient("carol", name="Carol", email="c@x.test", locale="es_ES"))
    engine.put_recipient(Recipient("acc", name="Accounts", email="a@x.test", locale="de_DE"))
    engine.upsert_subjects(
        [
            SubjectInput(
                "invoice",
                f"INV-{i}",
                {"status": "sent", "amount": 10 * i, "currency": "EUR", "due_at": "2026-12-08"},
                {"customer": "carol", "accounts": "acc"},
            )
            for i in range(1, 6)
        ]
    )


# --------------------------------------------------------------------------- version 0


def test_the_shipped_file_is_version_0_and_can_be_restored(env) -> None:  # noqa: ANN001
    _, ts = env
    view = ts.get("invoice-overdue")
    assert view.shipped == ("email.txt",) and view.latest is None
    edited = SHIPPED.replace("Hello", "Dear")
    assert ts.save("invoice-overdue", [("email", "txt", edited)], author="a", now=T0).version == 1
    ts.save("invoice-overdue", [("email", "html", "<p>{{ subject.key }}</p>")], author="a", now=T0)

    zero = ts.get("invoice-overdue", 0)
    assert zero.version == 0
    assert [(p.key, p.source, p.body) for p in zero.parts] == [(("email", "txt"), "file", SHIPPED)]
    restored = ts.restore("invoice-overdue", 0, author="bob", now=T0)
    assert (restored.version, restored.changed) == (3, ["email.txt"])
    now = {p.key: p for p in ts.get("invoice-overdue").parts}
    assert now[("email", "txt")].body == SHIPPED and now[("email", "txt")].author == "bob"
    assert now[("email", "html")].version == 2  # a part added here stays: nothing is deleted
    # the shipped wording again: nothing to store
    assert ts.restore("invoice-overdue", 0, author="bob", now=T0).version is None


def test_a_template_without_a_file_has_no_version_0(env) -> None:  # noqa: ANN001
    from duly.core.errors import NotFound

    _, ts = env
    ts.save("extra", [("email", "txt", "Hi {{ recipient.name }}\n")], author="a", now=T0)
    assert ts.get("extra").shipped == ()
    with pytest.raises(NotFound):
        ts.get("extra", 0)


# --------------------------------------------------------------------------- the save check


def test_a_save_is_checked_with_real_subjects_and_gives_no_false_warning(env) -> None:  # noqa: ANN001
    engine, ts = env
    _invoices(engine)
    # the shipped text renders for every real invoice and recipient: no warning (sample data,
    # which has no amount, is not used when real subjects exist)
    s = ts.save("invoice-overdue", [("email", "txt", SHIPPED + "\n")], author="a", now=T0)
    assert s.version == 1 and s.warnings == []


def test_real_subjects_and_each_of_their_recipients_are_bounded(env) -> None:  # noqa: ANN001
    engine, ts = env
    _invoices(engine)
    parties = ts.real_subjects("invoice-overdue")
    assert len(parties) <= 6
    refs = {s.ref for s, _ in parties}
    assert refs == {"invoice/INV-5", "invoice/INV-4", "invoice/INV-3"}  # the newest three
    assert {r.id for _, r in parties if r} == {"carol", "acc"}


def test_a_real_error_names_the_subject_and_recipient(env) -> None:  # noqa: ANN001
    engine, ts = env
    _invoices(engine)
    body = "Subject: x\n{{ attributes.missing_one }}\n"
    s = ts.save("invoice-overdue", [("email", "txt", body)], author="a", now=T0)
    assert s.version == 1 and s.warnings
    assert all("sample data" not in w for w in s.warnings), s.warnings
    assert "invoice/INV-5" in s.warnings[0] and "missing_one" in s.warnings[0]


def test_without_subjects_the_warning_says_sample_data_was_used(env) -> None:  # noqa: ANN001
    _, ts = env
    s = ts.save("invoice-overdue", [("email", "txt", SHIPPED + "\n")], author="a", now=T0)
    assert s.version == 1 and len(s.warnings) == 1
    w = s.warnings[0]
    assert "no invoice subjects yet" in w and "sample data" in w and "amount" in w, w


# --------------------------------------------------------------------------- variables


def test_variables_come_from_recent_subjects_with_examples(env) -> None:  # noqa: ANN001
    engine, ts = env
    _invoices(engine)
    engine.upsert_subjects(
        [
            SubjectInput(
                "invoice",
                "INV-LONG",
                {"status": "sent", "note": "x" * 500, "odd key": 1},
                {"customer": "carol"},
            )
        ]
    )
    groups = {g.title: g for g in ts.variables("invoice-overdue")}
    attrs = {v.name: v for v in groups["Subject"].items}
    assert attrs["attributes.amount"].example == "50"
    assert attrs["attributes.currency"].example == "EUR"
    assert len(attrs["attributes.note"].example) <= 41  # truncated
    assert attrs["attributes['odd key']"].insert == "{{ attributes['odd key'] }}"
    assert "subject.key" in attrs
    names = {v.name for g in groups.values() for v in g.items}
    assert {"recipient.name", "rule.name", "step.name", "event.name", "now"} <= names
    helpers = {v.name: v.insert for v in groups["Helpers"].items}
    assert {"date", "money", "relative"} <= helpers.keys()
    # inserted with the kind's own attributes where one fits
    assert helpers["date"] == "{{ date(attributes.due_at) }}"
    assert helpers["money"] == "{{ money(attributes.amount, attributes.currency) }}"


# --------------------------------------------------------------------------- variants


def test_a_variant_is_checked_in_its_own_language_for_its_base_rules_subjects(env) -> None:  # noqa: ANN001
    engine, ts = env
    _invoices(engine)
    assert [r.name for r in ts.rules_using("invoice-overdue.fr")] == ["invoice-overdue"]
    body = "Subject: Facture {{ subject.key }}\nDue {{ date(attributes.due_at) }}\n"
    s = ts.save("invoice-overdue.fr", [("email", "txt", body)], author="a", now=T0)
    assert s.version == 1 and s.warnings == []
    r = ts.preview(
        "invoice-overdue.fr",
        "email",
        {"subject": {"key": "INV-1"}, "attributes": {"due_at": "2026-12-08"}, "now": T0},
        sources={},
        recipient=None,
        timezone="Europe/Paris",
        locale="es_ES",
    )
    assert r.text is not None and "8 déc. 2026" in r.text, r.text


def test_the_dispatcher_sends_a_variant_saved_here_to_its_readers(
    db_url: str, tmp_path: Path, tdir: Path
) -> None:
    import sqlalchemy as sa

    from duly.core.clock import VirtualClock
    from duly.delivery.channels.outbox import OutboxChannel
    from duly.delivery.rendering import Renderer
    from duly.engine.dispatch import Dispatcher
    from duly.store.tables import deliveries

    rules = "template_language: en-GB\n" + RULES
    rf = load_rules_text(rules, path=str(tmp_path / "duly.yaml"), templates_dir=str(tdir))
    db = make_engine(db_url)
    try:
        clock = VirtualClock(T0)
        engine = Engine(rf, db, clock=clock)
        ts = TemplateStore(db, tdir, rules=rf)
        renderer = Renderer(
            tdir, loader_overrides=ts.override, template_language=rf.template_language
        )
        disp = Dispatcher(engine, {"email": OutboxChannel("email")}, renderer, send_workers=1)
        french = "Subject: Facture {{ subject.key }} du {{ date(attributes.due_at) }}\nBonjour\n"
        ts.save("invoice-overdue.fr", [("email", "txt", french)], author="a", now=T0)
        for rid, locale in (("fr", "fr_CA"), ("es", "es_ES")):
            engine.put_recipient(Recipient(rid, email=f"{rid}@x.test", locale=locale))
            engine.upsert_subject(
                SubjectInput(
                    "invoice",
                    f"I-{rid}",
                    {"status": "sent", "amount": 5, "currency": "EUR", "due_at": "2026-12-07"},
                    {"customer": rid},
                )
            )
        clock.set(datetime(2026, 12, 8, 0, 5, tzinfo=UTC))
        disp.run_once()
        with db.connect() as c:
            titles = dict(c.execute(sa.select(deliveries.c.recipient, deliveries.c.title)).all())
        assert titles == {
            "fr": "Facture I-fr du 7 déc. 2026",
            "es": "Invoice I-es is overdue",
        }, titles
    finally:
        renderer.close()
        db.dispose()
