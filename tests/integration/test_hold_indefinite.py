"""An indefinite hold (spec/rules.md "Hold"): ``hold_until: "indefinite"`` through the HTTP
API and the engine, on SQLite and PostgreSQL. Reads show ``"indefinite"``; what waits for
the hold has no date (``due_at`` null, ``held_until_cleared``); clearing it sends what
waited at once, or at its own time if later. Never a made-up date.

The real app in-process over a migrated database of each backend (tests/webui.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from duly.api.keys import KeyStore
from duly.client.models import DeliveryOut, SubjectDetail, SubjectOut
from duly.core.model import HOLD_INDEFINITE, Recipient
from duly.engine.service import ReminderInput, SubjectInput
from duly.store.tables import deliveries, subjects
from webui import Web, make_web  # tests/ is on sys.path (tests/conftest.py)


@pytest.fixture
def web(tmp_path: Path, db_url: str) -> Iterator[Web]:
    w = make_web(tmp_path, database=db_url)
    try:
        yield w
    finally:
        w.close()


class Api:
    def __init__(self, web: Web) -> None:
        self.web = web
        key, _ = KeyStore(web.rt.db).create("tests", datetime.now(UTC))
        self.headers = {"Authorization": f"Bearer {key}"}

    def __getattr__(self, method: str) -> Any:
        call = getattr(self.web.client, method)
        return lambda url, **kw: call(url, headers=self.headers, **kw)


@pytest.fixture
def api(web: Web) -> Api:
    a = Api(web)
    r = a.put("/v1/recipients/ada", json={"name": "Ada", "email": "ada@example.test"})
    assert r.status_code == 201, r.text
    return a


def invoice(days: int = 10, **kw: Any) -> dict[str, Any]:
    due = (datetime.now(UTC) + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "attributes": {"status": "sent", "due_at": due},
        "recipients": {"customer": "ada"},
        **kw,
    }


def stored_hold(web: Web, key: str) -> datetime | None:
    with web.rt.db.connect() as conn:
        return conn.execute(  # type: ignore[no-any-return]
            sa.select(subjects.c.hold_until).where(subjects.c.key == key)
        ).scalar_one()


def no_made_up_date(body: Any) -> None:
    assert "9000" not in json.dumps(body), body


def test_put_indefinite_reads_back_indefinite_everywhere(api: Api, web: Web) -> None:
    r = api.put("/v1/subjects/invoice/I1", json=invoice(hold_until="indefinite"))
    assert r.status_code == 200, r.text
    body = r.json()
    no_made_up_date(body)
    assert body["hold_until"] == "indefinite"
    # both reminders fall due during the hold: the latest (overdue) waits for it to be
    # cleared, the other is skipped (held) and is no longer in the plan
    assert [(d["step"], d["due_at"], d["held_until_cleared"]) for d in body["plan"]] == [
        ("overdue", None, True)
    ]
    assert SubjectOut.model_validate(body).hold_until == "indefinite"
    assert stored_hold(web, "I1") == HOLD_INDEFINITE  # one representation in the store

    got = api.get("/v1/subjects/invoice/I1")
    assert got.status_code == 200, got.text
    no_made_up_date(got.json())
    detail = SubjectDetail.model_validate(got.json())
    assert detail.hold_until == "indefinite"
    assert [(d.step, d.state, d.reason) for d in detail.history] == [
        ("due-soon", "skipped", "held")
    ]
    assert [(d.due_at, d.held_until_cleared) for d in detail.plan] == [(None, True)]

    listed = api.get("/v1/deliveries", params={"subject": "invoice/I1"})
    assert listed.status_code == 200, listed.text
    no_made_up_date(listed.json())
    waiting = [d for d in listed.json()["items"] if d["state"] == "pending"]
    assert [(d["due_at"], d["held_until_cleared"]) for d in waiting] == [(None, True)]
    one = api.get(f"/v1/deliveries/{waiting[0]['id']}")
    assert one.status_code == 200, one.text
    no_made_up_date(one.json())
    assert DeliveryOut.model_validate(one.json()).held_until_cleared


def test_a_dated_hold_reads_back_as_a_date(api: Api) -> None:
    until = (datetime.now(UTC) + timedelta(days=20)).replace(microsecond=0)
    r = api.put("/v1/subjects/invoice/D1", json=invoice(hold_until=until.isoformat()))
    assert r.status_code == 200, r.text
    assert datetime.fromisoformat(r.json()["hold_until"]) == until
    assert all(not d["held_until_cleared"] and d["due_at"] for d in r.json()["plan"])


def test_batch_accepts_indefinite(api: Api, web: Web) -> None:
    body = {
        "subjects": [
            {"kind": "invoice", "key": "B1", **invoice(hold_until="indefinite")},
            {"kind": "invoice", "key": "B2", **invoice(hold_until="forever")},
            {"kind": "invoice", "key": "B3", **invoice()},
        ]
    }
    r = api.post("/v1/subjects:batch", json=body)
    # "forever" is neither a time nor "indefinite": the whole request is refused
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"].endswith("hold_until"), r.text
    del body["subjects"][1]
    r = api.post("/v1/subjects:batch", json=body)
    assert r.status_code == 200, r.text
    assert [x["ok"] for x in r.json()["results"]] == [True, True]
    assert stored_hold(web, "B1") == HOLD_INDEFINITE
    assert api.get("/v1/subjects/invoice/B1").json()["hold_until"] == "indefinite"
    assert api.get("/v1/subjects/invoice/B3").json()["hold_until"] is None


def test_put_refuses_other_words(api: Api) -> None:
    r = api.put("/v1/subjects/invoice/W1", json=invoice(hold_until="until-paid"))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "hold_until", r.text


def test_openapi_says_indefinite_or_a_time(api: Api) -> None:
    schemas = api.get("/openapi.json").json()["components"]["schemas"]
    for name in ("SubjectIn", "SubjectOut"):
        spec = json.dumps(schemas[name]["properties"]["hold_until"])
        assert '"indefinite"' in spec and "date-time" in spec, (name, spec)
    assert "held_until_cleared" in schemas["DeliveryOut"]["properties"]


def test_clearing_an_indefinite_hold_sends_what_waited_at_once(web: Web) -> None:
    """A one-off reminder about a held subject waits (the dispatcher defers it to the end
    of the hold); cleared, it goes at once."""
    eng = web.engine
    eng.upsert_subject(SubjectInput("job", "J1", {}, {}, "indefinite"))
    eng.put_recipient(Recipient("ada", email="ada@example.test"))
    soon = eng.clock.now() + timedelta(seconds=1)
    eng.create_reminder(
        ReminderInput("Call back", "", soon, ["ada"], subject="job/J1", category="reminder")
    )

    def row() -> dict[str, Any]:
        with web.rt.db.connect() as conn:
            return dict(
                conn.execute(sa.select(deliveries).where(deliveries.c.subject == "job/J1"))
                .mappings()
                .one()
            )

    web.start()
    deadline = datetime.now(UTC) + timedelta(seconds=15)
    while row()["due_at"] != HOLD_INDEFINITE and datetime.now(UTC) < deadline:
        time.sleep(0.1)
    assert (row()["state"], row()["due_at"]) == ("pending", HOLD_INDEFINITE)

    cleared = eng.upsert_subject(SubjectInput("job", "J1", {}, {}, None))
    assert cleared.subject is not None and cleared.subject.hold_until is None
    deadline = datetime.now(UTC) + timedelta(seconds=15)
    while row()["state"] == "pending" and datetime.now(UTC) < deadline:
        time.sleep(0.1)
    assert row()["state"] == "sent"


def test_an_indefinite_hold_given_an_end_moves_what_waited_to_it(web: Web) -> None:
    eng = web.engine
    eng.put_recipient(Recipient("ada", email="ada@example.test"))
    eng.upsert_subject(SubjectInput("job", "J2", {}, {}, "indefinite"))
    now = eng.clock.now()
    eng.create_reminder(
        ReminderInput("Later", "", now + timedelta(days=1), ["ada"], subject="job/J2")
    )
    # the dispatcher's hold check, as when the reminder falls due during the hold
    with web.rt.db.begin() as conn:
        conn.execute(
            sa.update(deliveries)
            .where(deliveries.c.subject == "job/J2")
            .values(due_at=HOLD_INDEFINITE)
        )
    end = now + timedelta(days=3)
    eng.upsert_subject(SubjectInput("job", "J2", {}, {}, end))
    with web.rt.db.connect() as conn:
        due = conn.execute(
            sa.select(deliveries.c.due_at).where(deliveries.c.subject == "job/J2")
        ).scalar_one()
    assert due == end
