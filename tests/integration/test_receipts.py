"""Delivery receipts and inbound messages (issue 16): Twilio status callbacks and inbound
SMS, Postmark webhooks, on SQLite and PostgreSQL.

The messages go out through the local fakes of Twilio and Postmark (tests/fakes); the
callbacks come in as the providers send them, signed here the documented way
(tests/fakes/provider_callbacks.py cites the documents)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from duly.core.model import Recipient
from duly.core.rules.loader import load_rules_text
from duly.engine.receipts import ReceiptEvent, record_receipts
from duly.engine.service import SubjectInput
from duly.store import receipts as store
from duly.store.tables import deliveries, suppressions, webhook_events
from fakes.email_providers import FakePostmark
from fakes.provider_callbacks import basic_auth, duly_api, twilio_form, twilio_signature
from fakes.twilio_server import FakeTwilio

PUBLIC = "https://duly.example.test"
FROM = "+15550100000"
PHONE = "+15550100001"
HOOK = ("hook", "s3cret-pw")

RULES = """
timezone: UTC
channels:
  sms:
    type: twilio-sms
    account: {account}
    token: "${{T_TWILIO_TOKEN}}"
    from: "{from_}"
    base_url: {twilio_url}
    allow_private: true
  email:
    type: postmark
    from: billing@acme.test
    api_key: "${{T_POSTMARK_KEY}}"
    base_url: {postmark_url}
    allow_private: true
    webhook_secret: "${{T_POSTMARK_HOOK}}"
webhooks:
  - url: http://127.0.0.1:9/events
    secret_env: T_EVENTS_SECRET
    events: [delivery.*]
rules:
  - name: nudge
    subject: invoice
    on: {{change: status, to: sent}}
    to: [customer]
    channels: [sms]
    template: note
  - name: mail
    subject: invoice
    on: {{change: status, to: sent}}
    to: [customer]
    channels: [email]
    template: note
"""


@pytest.fixture
def env(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv("DULY_PUBLIC_URL", PUBLIC)
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "note.sms.txt").write_text("Invoice {{ subject.key }} is due.\n")
    (tmp_path / "templates" / "note.email.txt").write_text("Subject: Due\nInvoice due.\n")
    with FakeTwilio() as twilio, FakePostmark() as postmark:
        monkeypatch.setenv("T_TWILIO_TOKEN", twilio.token)
        monkeypatch.setenv("T_POSTMARK_KEY", postmark.key)
        monkeypatch.setenv("T_POSTMARK_HOOK", ":".join(HOOK))
        monkeypatch.setenv("T_EVENTS_SECRET", "whsec_" + "A" * 32)
        text = RULES.format(
            account=twilio.account,
            from_=FROM,
            twilio_url=twilio.base_url,
            postmark_url=postmark.url,
        )
        with duly_api(text, tmp_path, db_url) as (rt, client):
            yield {"rt": rt, "client": client, "twilio": twilio, "postmark": postmark}


def send(env: dict[str, Any], key: str = "INV-1", consent: dict[str, Any] | None = None) -> None:
    eng = env["rt"].engine
    eng.put_recipient(
        Recipient(
            "c1", name="Alice", email="alice@example.test", phone=PHONE, consent=consent or {}
        )
    )
    eng.upsert_subject(SubjectInput("invoice", key, {"status": "draft"}, {"customer": "c1"}))
    eng.upsert_subject(SubjectInput("invoice", key, {"status": "sent"}, {"customer": "c1"}))
    while env["rt"].dispatcher.run_once():
        pass


def rows(env: dict[str, Any], channel: str) -> list[dict[str, Any]]:
    with env["rt"].db.connect() as c:
        q = sa.select(deliveries).where(deliveries.c.channel == channel).order_by(deliveries.c.id)
        return [dict(r) for r in c.execute(q).mappings()]


def status(env: dict[str, Any], form: dict[str, str], url: str | None = None, **kw: Any) -> Any:
    path = "/inbound/twilio/status"
    body, headers = twilio_form(env["twilio"].token, url or PUBLIC + path, form)
    headers.update(kw.pop("headers", {}))
    return env["client"].post(path, content=body, headers=headers)


def sms_in(env: dict[str, Any], text: str, sid: str) -> Any:
    path = "/inbound/twilio/messages"
    form = {"MessageSid": sid, "From": PHONE, "To": FROM, "Body": text, "AccountSid": "AC1"}
    body, headers = twilio_form(env["twilio"].token, PUBLIC + path, form)
    return env["client"].post(path, content=body, headers=headers)


def receipts(env: dict[str, Any], delivery_id: int) -> list[dict[str, Any]]:
    with env["rt"].db.connect() as c:
        return store.receipts_of(c, delivery_id)


def events(env: dict[str, Any]) -> list[str]:
    with env["rt"].db.connect() as c:
        return list(
            c.execute(sa.select(webhook_events.c.type).order_by(webhook_events.c.id)).scalars()
        )


def active_suppressions(env: dict[str, Any]) -> list[str]:
    with env["rt"].db.connect() as c:
        q = sa.select(suppressions.c.address).where(suppressions.c.cleared_at.is_(None))
        return list(c.execute(q).scalars())


# --------------------------------------------------------------------------- Twilio


def test_twilio_callbacks_out_of_order_duplicates_and_unknown(env: dict[str, Any]) -> None:
    send(env)
    (row,) = rows(env, "sms")
    sid = row["receipt"]
    assert row["state"] == "sent" and sid.startswith("SM")
    # delivered arrives before sent; then a duplicate; then one for a message duly never sent
    assert status(env, {"MessageSid": sid, "MessageStatus": "delivered"}).status_code == 204
    assert status(env, {"MessageSid": sid, "MessageStatus": "sent"}).status_code == 204
    assert status(env, {"MessageSid": sid, "MessageStatus": "sent", "X": "1"}).status_code == 204
    assert status(env, {"MessageSid": "SMnope", "MessageStatus": "delivered"}).status_code == 204
    got = [r["status"] for r in receipts(env, row["id"])]
    assert sorted(got) == ["accepted", "delivered"]  # the duplicate "sent" recorded once
    with env["rt"].db.connect() as c:
        counts = store.receipt_counts(c)
    assert counts["delivered"] == 2 and counts["accepted"] == 1 and counts["unmatched"] == 1
    assert events(env).count("delivery.delivered") == 1  # the unknown message emits nothing
    r = env["client"].get("/metrics")
    assert 'duly_receipts_total{status="delivered"} 2.0' in r.text
    assert 'duly_receipts_total{status="unmatched"} 1.0' in r.text


def test_twilio_signatures_missing_wrong_and_replayed(env: dict[str, Any]) -> None:
    send(env)
    (row,) = rows(env, "sms")
    form = {"MessageSid": row["receipt"], "MessageStatus": "delivered"}
    body, _ = twilio_form(env["twilio"].token, PUBLIC + "/inbound/twilio/status", form)
    ctype = {"Content-Type": "application/x-www-form-urlencoded"}
    c = env["client"]
    assert c.post("/inbound/twilio/status", content=body, headers=ctype).status_code == 403
    wrong = twilio_signature("not-the-token", PUBLIC + "/inbound/twilio/status", form)
    r = c.post(
        "/inbound/twilio/status", content=body, headers={**ctype, "X-Twilio-Signature": wrong}
    )
    assert r.status_code == 403
    # signed for another URL (not the public one): refused
    assert status(env, form, url="https://evil.example/inbound/twilio/status").status_code == 403
    assert receipts(env, row["id"]) == []
    assert status(env, form).status_code == 204
    first = receipts(env, row["id"])
    assert status(env, form).status_code == 204  # a replay: acknowledged, nothing applied
    assert receipts(env, row["id"]) == first


def test_a_hard_failure_suppresses_the_number(env: dict[str, Any]) -> None:
    send(env)
    (row,) = rows(env, "sms")
    form = {"MessageSid": row["receipt"], "MessageStatus": "undelivered", "ErrorCode": "30006"}
    assert status(env, form).status_code == 204
    assert active_suppressions(env) == [PHONE]
    assert "delivery.undelivered" in events(env)
    (rec,) = receipts(env, row["id"])
    assert rec["hard"] is True and "30006" in rec["detail"]


def test_a_soft_failure_does_not_suppress(env: dict[str, Any]) -> None:
    send(env)
    (row,) = rows(env, "sms")
    form = {"MessageSid": row["receipt"], "MessageStatus": "undelivered", "ErrorCode": "30003"}
    assert status(env, form).status_code == 204
    assert active_suppressions(env) == []


def test_stop_then_a_send_is_skipped_and_start_re_enables(env: dict[str, Any]) -> None:
    r = sms_in(env, " stop ", "SMin1")
    assert r.status_code == 200 and "<Response>" in r.text
    send(env, "INV-1")  # the recipient is (re)written without consent: STOP comes after
    assert rows(env, "sms")[-1]["state"] == "sent"
    assert sms_in(env, "STOP", "SMin2").status_code == 200
    prefs = env["client"].app.state.runtime.engine
    with prefs.db.connect() as c:
        rec = prefs.store.get_recipients(c, ["c1"])["c1"]
    assert rec.consent == {"channels": {"sms": False}}
    eng = env["rt"].engine
    eng.upsert_subject(SubjectInput("invoice", "INV-2", {"status": "draft"}, {"customer": "c1"}))
    eng.upsert_subject(SubjectInput("invoice", "INV-2", {"status": "sent"}, {"customer": "c1"}))
    while env["rt"].dispatcher.run_once():
        pass
    last = rows(env, "sms")[-1]
    assert (last["state"], last["reason"]) == ("skipped", "no_consent")
    assert sms_in(env, "START", "SMin3").status_code == 200
    with prefs.db.connect() as c:
        assert prefs.store.get_recipients(c, ["c1"])["c1"].consent == {}
    # the same STOP again (same signature): a replay, acknowledged and not applied
    assert sms_in(env, "STOP", "SMin2").status_code == 200
    with prefs.db.connect() as c:
        assert prefs.store.get_recipients(c, ["c1"])["c1"].consent == {}
        assert store.last_inbound(c, PHONE, "sms") is not None


def test_whatsapp_channels_read_the_last_inbound_time(env: dict[str, Any]) -> None:
    from duly.engine.receipts import inbound_message, last_inbound_lookup

    look = last_inbound_lookup(env["rt"].db, "wa")
    assert look("whatsapp:" + PHONE) is None
    inbound_message(env["rt"].engine, "wa", PHONE, "hello")
    assert look("whatsapp:" + PHONE) is not None


# --------------------------------------------------------------------------- Postmark


def postmark(env: dict[str, Any], body: dict[str, Any], auth: tuple[str, str] = HOOK) -> Any:
    return env["client"].post(
        "/inbound/postmark",
        content=json.dumps(body),
        headers={**basic_auth(*auth), "Content-Type": "application/json"},
    )


def test_a_postmark_body_nested_too_deep_is_400_not_500(env: dict[str, Any]) -> None:
    deep = b'{"a":' * 5000  # json.loads gives up with RecursionError
    r = env["client"].post(
        "/inbound/postmark",
        content=deep,
        headers={**basic_auth(*HOOK), "Content-Type": "application/json"},
    )
    assert r.status_code == 400, r.text


def test_postmark_bounce_suppresses_and_complaint_withdraws_consent(env: dict[str, Any]) -> None:
    send(env)
    (row,) = rows(env, "email")
    pmid = row["receipt"]
    assert postmark(env, {"RecordType": "Bounce"}, ("hook", "wrong")).status_code == 403
    r = env["client"].post("/inbound/postmark", json={"RecordType": "Bounce"})
    assert r.status_code == 403
    delivered = {
        "RecordType": "Delivery",
        "MessageID": pmid,
        "DeliveredAt": "2026-12-05T10:00:01.1234567Z",
    }
    assert postmark(env, delivered).status_code == 204
    assert postmark(env, delivered).status_code == 204  # duplicate
    soft = {
        "RecordType": "Bounce",
        "MessageID": pmid,
        "Type": "SoftBounce",
        "BouncedAt": "2026-12-05T10:00:02Z",
    }
    assert postmark(env, soft).status_code == 204
    assert active_suppressions(env) == []
    hard = {**soft, "Type": "HardBounce", "BouncedAt": "2026-12-05T10:00:03Z"}
    assert postmark(env, hard).status_code == 204
    assert active_suppressions(env) == ["alice@example.test"]
    spam = {"RecordType": "SpamComplaint", "MessageID": pmid, "BouncedAt": "2026-12-05T10:00:04Z"}
    assert postmark(env, spam).status_code == 204
    with env["rt"].db.connect() as c:
        rec = env["rt"].engine.store.get_recipients(c, ["c1"])["c1"]
    assert rec.consent == {"reminder": False}
    got = receipts(env, row["id"])
    assert [r["status"] for r in got] == ["delivered", "bounced", "bounced", "complained"]
    assert [r["hard"] for r in got] == [False, False, True, False]
    types = events(env)
    assert types.count("delivery.delivered") == 1 and types.count("delivery.bounced") == 2
    assert "delivery.complained" in types
    assert postmark(env, {"RecordType": "Click", "MessageID": pmid}).status_code == 204


def test_the_delivery_api_lists_receipts_in_time_order(env: dict[str, Any]) -> None:
    send(env)
    (row,) = rows(env, "email")
    pmid = row["receipt"]
    eng = env["rt"].engine
    from duly.delivery.inbound import parse_time

    record_receipts(
        eng,
        [
            ReceiptEvent("postmark", pmid, "read", occurred_at=parse_time("2026-12-05T10:05:00Z")),
            ReceiptEvent(
                "postmark", pmid, "delivered", occurred_at=parse_time("2026-12-05T10:01:00Z")
            ),
        ],
    )
    key, _ = env["client"].app.state.keys.create("t", eng.clock.now())
    auth = {"Authorization": f"Bearer {key}"}
    r = env["client"].get(f"/v1/deliveries/{row['id']}", headers=auth)
    assert r.status_code == 200, r.text
    got = r.json()["receipts"]
    assert [x["status"] for x in got] == ["delivered", "read"]  # by when, not arrival
    assert got[0]["provider_message_id"] == pmid and got[0]["hard"] is False
    r = env["client"].get("/v1/stats", headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["receipts"]["read"] == 1 and r.json()["receipts"]["unmatched"] == 0


# --------------------------------------------------------------------------- duly simulate

SIM_RULES = """
timezone: UTC
rules:
  - name: nudge
    subject: invoice
    on: nudge
    to: [customer]
    channels: [email]
    template: note
"""


def _sim(lines: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    import io
    from datetime import UTC, datetime

    from duly.engine.simulation import parse_timeline, run

    rf = load_rules_text(SIM_RULES, check_templates=False, resolve_env=False, check_channels=False)
    tl = parse_timeline("".join(json.dumps(x) + "\n" for x in lines))
    err = io.StringIO()
    rows = run(rf, tl, until=datetime(2026, 3, 2, tzinfo=UTC), render=False, stderr=err)
    return rows, err.getvalue()


def _nudge(at: str, n: int) -> dict[str, Any]:
    return {"at": at, "event": {"id": f"e{n}", "name": "nudge", "subject": "invoice/INV-1"}}


SIM_START = [
    {"at": "2026-03-01T08:00:00Z", "recipient": {"id": "c1", "email": "a@example.test"}},
    {
        "at": "2026-03-01T08:00:00Z",
        "subject": {"kind": "invoice", "key": "INV-1", "recipients": {"customer": "c1"}},
    },
    _nudge("2026-03-01T08:00:00Z", 1),
]
DELIVERY = {"rule": "nudge", "subject": "invoice/INV-1", "recipient": "c1", "channel": "email"}


def test_simulate_a_hard_bounce_suppresses_later_sends() -> None:
    bounce = {"delivery": DELIVERY, "status": "bounced", "hard": True}
    rows, err = _sim(
        [
            *SIM_START,
            {"at": "2026-03-01T09:00:00Z", "receipt": bounce},
            _nudge("2026-03-01T10:00:00Z", 2),
        ]
    )
    assert err == ""
    assert [(r["outcome"], r["reason"]) for r in rows] == [
        ("sent", None),
        ("skipped", "suppressed"),
    ]


def test_simulate_a_complaint_withdraws_consent_and_an_early_receipt_is_reported() -> None:
    early = {"at": "2026-03-01T07:00:00Z", "receipt": {"delivery": DELIVERY, "status": "delivered"}}
    spam = {"delivery": DELIVERY, "status": "complained"}
    rows, err = _sim(
        [
            early,
            *SIM_START,
            {"at": "2026-03-01T09:00:00Z", "receipt": spam},
            _nudge("2026-03-01T10:00:00Z", 2),
        ]
    )
    assert "nothing was sent" in err and "line skipped" in err
    assert [r["outcome"] for r in rows] == ["sent", "skipped"]
    assert rows[1]["reason"] in ("suppressed", "no_consent")


# --------------------------------------------------------------------------- the store


def test_store_long_receipts_unknown_ids_and_inbound_times(db_engine: sa.Engine) -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 12, 5, 10, tzinfo=UTC)
    row = {
        "rule": "r",
        "step": "",
        "occurrence": "0",
        "subject": "invoice/I",
        "recipient": "c1",
        "channel": "smtp",
        "state": "sent",
        "category": "reminder",
        "planned_at": now,
        "due_at": now,
        "created_at": now,
        "updated_at": now,
        "sent_at": now,
        "receipt": "250 " + "q" * 5000,  # an SMTP reply of any length is a receipt
    }
    with db_engine.begin() as c:
        c.execute(sa.insert(deliveries).values(**row))
        got = store.record_receipt(
            c,
            provider="p",
            provider_message_id="nope",
            status="delivered",
            hard=False,
            occurred_at=None,
            received_at=now,
        )
        assert got.new and got.deliveries == []
        again = store.record_receipt(
            c,
            provider="p",
            provider_message_id="nope",
            status="delivered",
            hard=False,
            occurred_at=None,
            received_at=now + timedelta(seconds=5),
        )
        assert not again.new
        with pytest.raises(ValueError):
            store.record_receipt(
                c,
                provider="p",
                provider_message_id="x",
                status="opened",
                hard=False,
                occurred_at=None,
                received_at=now,
            )
        store.note_inbound(c, "+15550100001", "sms", now)
        store.note_inbound(c, "+15550100001", "sms", now - timedelta(hours=1))  # late: ignored
        store.note_inbound(c, "+15550100001", "wa", now - timedelta(hours=2))
    with db_engine.connect() as c:
        assert store.receipt_counts(c)["unmatched"] == 1
        assert store.receipt_counts(c, since=now + timedelta(seconds=1))["delivered"] == 0
        assert store.last_inbound(c, "+15550100001", "sms") == now
        assert store.last_inbound(c, "+15550100001", "wa") == now - timedelta(hours=2)
        assert store.last_inbound(c, "+15550100001") == now
        assert store.last_inbound(c, "+15550100009") is None
