"""Meta's WhatsApp Cloud API webhook (``/inbound/whatsapp``), STOP matched on
``addresses.<channel>``, on SQLite and PostgreSQL.

Messages go out through the local fake of the Cloud API (tests/fakes/whatsapp_cloud_server.py)
and Twilio's (tests/fakes/twilio_server.py); the webhooks come in as Meta posts them, signed
here the documented way (the fake's module doc cites Meta's documents)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from duly.core.model import Recipient
from duly.engine.service import SubjectInput
from duly.store import receipts as store
from duly.store.tables import deliveries, suppressions, webhook_events
from fakes.provider_callbacks import duly_api, twilio_form
from fakes.twilio_server import FakeTwilio
from fakes.whatsapp_cloud_server import (
    FakeWhatsAppCloud,
    message_payload,
    meta_signature,
    status_payload,
)

PUBLIC = "https://duly.example.test"
FROM = "+15550100000"
PHONE = "+15550100001"
OTHER = "+15550100009"  # a number only found under a recipient's addresses
SECRET = "app-secret-" + "x" * 20
VERIFY = "verify-me-" + "y" * 10

RULES = """
timezone: UTC
channels:
  whatsapp:
    type: whatsapp-cloud
    phone_number_id: "{pnid}"
    token: "${{T_WA_TOKEN}}"
    template: appointment_reminder
    language: en_US
    app_secret: "${{T_WA_SECRET}}"
    verify_token: "${{T_WA_VERIFY}}"
    base_url: {meta_url}
    allow_private: true
  sms:
    type: twilio-sms
    account: {account}
    token: "${{T_TWILIO_TOKEN}}"
    from: "{from_}"
    base_url: {twilio_url}
    allow_private: true
webhooks:
  - url: http://127.0.0.1:9/events
    secret_env: T_EVENTS_SECRET
    events: [delivery.*]
rules:
  - name: wa
    subject: invoice
    on: {{change: status, to: sent}}
    to: [customer]
    channels: [whatsapp]
    template: note
  - name: nudge
    subject: invoice
    on: {{change: status, to: sent}}
    to: [customer]
    channels: [sms]
    template: note
"""


@pytest.fixture
def env(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv("DULY_PUBLIC_URL", PUBLIC)
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "note.sms.txt").write_text("Invoice {{ subject.key }} is due.\n")
    (tmp_path / "templates" / "note.whatsapp.txt").write_text(
        '{"1": {{ recipient.name | tojson }}, "2": {{ subject.key | tojson }},'
        ' "text": "Invoice due"}\n'
    )
    with FakeTwilio() as twilio, FakeWhatsAppCloud() as meta:
        monkeypatch.setenv("T_TWILIO_TOKEN", twilio.token)
        monkeypatch.setenv("T_WA_TOKEN", meta.token)
        monkeypatch.setenv("T_WA_SECRET", SECRET)
        monkeypatch.setenv("T_WA_VERIFY", VERIFY)
        monkeypatch.setenv("T_EVENTS_SECRET", "whsec_" + "A" * 32)
        text = RULES.format(
            pnid=meta.phone_number_id,
            meta_url=meta.url,
            account=twilio.account,
            from_=FROM,
            twilio_url=twilio.base_url,
        )
        with duly_api(text, tmp_path, db_url) as (rt, client):
            yield {"rt": rt, "client": client, "twilio": twilio, "meta": meta}


def send(env: dict[str, Any], key: str, recipient: Recipient | None = None) -> None:
    eng = env["rt"].engine
    if recipient is not None:
        eng.put_recipient(recipient)
    eng.upsert_subject(SubjectInput("invoice", key, {"status": "draft"}, {"customer": "c1"}))
    eng.upsert_subject(SubjectInput("invoice", key, {"status": "sent"}, {"customer": "c1"}))
    while env["rt"].dispatcher.run_once():
        pass


def alice(**kw: Any) -> Recipient:
    return Recipient("c1", **{"name": "Alice", "phone": PHONE, **kw})


def rows(env: dict[str, Any], channel: str) -> list[dict[str, Any]]:
    with env["rt"].db.connect() as c:
        q = sa.select(deliveries).where(deliveries.c.channel == channel).order_by(deliveries.c.id)
        return [dict(r) for r in c.execute(q).mappings()]


def consent(env: dict[str, Any]) -> dict[str, Any]:
    eng = env["rt"].engine
    with eng.db.connect() as c:
        return dict(eng.store.get_recipients(c, ["c1"])["c1"].consent)


def hook(env: dict[str, Any], payload: Any, secret: str | None = SECRET, **headers: str) -> Any:
    raw = json.dumps(payload).encode()
    if secret is not None:
        headers.setdefault("X-Hub-Signature-256", meta_signature(secret, raw))
    return env["client"].post(
        "/inbound/whatsapp", content=raw, headers={"Content-Type": "application/json", **headers}
    )


def status(env: dict[str, Any], wamid: str, state: str, **kw: Any) -> Any:
    return hook(env, status_payload(env["meta"].phone_number_id, wamid, state, PHONE, **kw))


def text_in(env: dict[str, Any], text: str, sender: str = PHONE, **kw: Any) -> Any:
    kw.setdefault("timestamp", int(time.time()))
    return hook(env, message_payload(env["meta"].phone_number_id, sender, text, **kw))


def receipts(env: dict[str, Any], delivery_id: int) -> list[dict[str, Any]]:
    with env["rt"].db.connect() as c:
        return store.receipts_of(c, delivery_id)


def active_suppressions(env: dict[str, Any]) -> list[str]:
    with env["rt"].db.connect() as c:
        q = sa.select(suppressions.c.address).where(suppressions.c.cleared_at.is_(None))
        return list(c.execute(q).scalars())


# --------------------------------------------------------------------------- handshake


def test_the_verification_handshake_echoes_the_challenge_only_for_the_token(
    env: dict[str, Any],
) -> None:
    c = env["client"]
    ok = {"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "1158201444"}
    r = c.get("/inbound/whatsapp", params=ok)
    assert r.status_code == 200 and r.text == "1158201444"
    for bad in (
        {**ok, "hub.verify_token": VERIFY + "x"},
        {**ok, "hub.verify_token": ""},
        {**ok, "hub.mode": "unsubscribe"},
        {k: v for k, v in ok.items() if k != "hub.verify_token"},
        {k: v for k, v in ok.items() if k != "hub.challenge"},
        {**ok, "hub.challenge": "9" * 1000},
    ):
        r = c.get("/inbound/whatsapp", params=bad)
        assert r.status_code == 403, bad
        assert "1158201444" not in r.text


# --------------------------------------------------------------------------- statuses


def test_statuses_become_receipts_in_time_order_once(env: dict[str, Any]) -> None:
    send(env, "INV-1", alice())
    (row,) = rows(env, "whatsapp")
    wamid = row["receipt"]
    assert row["state"] == "sent" and wamid.startswith("wamid.")
    # delivered arrives before sent; read after; then replays of each
    assert status(env, wamid, "delivered", timestamp=1772442010).status_code == 200
    assert status(env, wamid, "sent", timestamp=1772442000).status_code == 200
    assert status(env, wamid, "read", timestamp=1772442020).status_code == 200
    for state, at in [("delivered", 1772442010), ("sent", 1772442000), ("read", 1772442020)]:
        assert status(env, wamid, state, timestamp=at).status_code == 200
    got = receipts(env, row["id"])
    assert [r["status"] for r in got] == ["accepted", "delivered", "read"]
    assert all(r["provider"] == "whatsapp-cloud" for r in got)
    # an unknown message: recorded unmatched, never an error
    assert status(env, "wamid.unknown", "delivered").status_code == 200
    with env["rt"].db.connect() as c:
        counts = store.receipt_counts(c)
    assert counts["delivered"] == 2 and counts["unmatched"] == 1


def test_unsigned_and_wrongly_signed_webhooks_are_refused(env: dict[str, Any]) -> None:
    send(env, "INV-1", alice())
    (row,) = rows(env, "whatsapp")
    payload = status_payload(env["meta"].phone_number_id, row["receipt"], "failed", PHONE)
    assert hook(env, payload, secret=None).status_code == 403
    assert hook(env, payload, secret="another-app-secret").status_code == 403
    raw = json.dumps(payload).encode()
    sig = meta_signature(SECRET, raw)
    for header in (sig.replace("sha256=", "sha1="), sig[:-2], "sha256=", sig + "00"):
        assert hook(env, payload, **{"X-Hub-Signature-256": header}).status_code == 403
    # signed over other bytes (the same JSON re-serialized with other spacing): refused
    other = json.dumps(payload, indent=1).encode()
    r = env["client"].post(
        "/inbound/whatsapp",
        content=other,
        headers={"X-Hub-Signature-256": sig, "Content-Type": "application/json"},
    )
    assert r.status_code == 403
    assert receipts(env, row["id"]) == []
    # a signed body that is not a JSON object: 400, naming the problem
    bad = b"[1, 2]"
    r = env["client"].post(
        "/inbound/whatsapp",
        content=bad,
        headers={"X-Hub-Signature-256": meta_signature(SECRET, bad)},
    )
    assert r.status_code == 400 and "JSON object" in r.text


def test_a_failed_undeliverable_status_suppresses_the_number(env: dict[str, Any]) -> None:
    send(env, "INV-1", alice())
    (row,) = rows(env, "whatsapp")
    assert status(env, row["receipt"], "failed", error=131026).status_code == 200
    assert active_suppressions(env) == [PHONE]
    (rec,) = receipts(env, row["id"])
    assert rec["status"] == "undelivered" and rec["hard"] is True
    assert "131026" in rec["detail"]


def test_a_failed_status_of_another_kind_does_not_suppress(env: dict[str, Any]) -> None:
    send(env, "INV-1", alice())
    (row,) = rows(env, "whatsapp")
    assert status(env, row["receipt"], "failed", error=131047).status_code == 200
    assert active_suppressions(env) == []
    (rec,) = receipts(env, row["id"])
    assert rec["hard"] is False and "131047" in rec["detail"]


# --------------------------------------------------------------------------- messages


def test_stop_and_start_on_whatsapp_and_replays_are_no_ops(env: dict[str, Any]) -> None:
    send(env, "INV-1", alice())
    assert rows(env, "whatsapp")[-1]["state"] == "sent"
    now = int(time.time())
    assert text_in(env, "Stop", wamid="wamid.in1", timestamp=now - 60).status_code == 200
    assert consent(env) == {"channels": {"whatsapp": False}}
    send(env, "INV-2")
    last = rows(env, "whatsapp")[-1]
    assert (last["state"], last["reason"]) == ("skipped", "no_consent")
    assert rows(env, "sms")[-1]["state"] == "sent"  # only the WhatsApp channel
    assert text_in(env, "START", wamid="wamid.in2", timestamp=now - 30).status_code == 200
    assert consent(env) == {}
    # the STOP again (the same message id): a replay, acknowledged and not applied
    assert text_in(env, "Stop", wamid="wamid.in1", timestamp=now - 60).status_code == 200
    assert consent(env) == {}
    # another process might not have seen it: a keyword older than the START changes nothing
    env["client"].app.state.inbound_seen = None
    assert text_in(env, "Stop", wamid="wamid.in1", timestamp=now - 60).status_code == 200
    assert consent(env) == {}


def test_an_inbound_message_opens_the_window_for_free_form_text(env: dict[str, Any]) -> None:
    meta = env["meta"]
    meta.inside_window.add(PHONE.lstrip("+"))
    send(env, "INV-1", alice())
    assert meta.requests[-1].body["type"] == "template"  # nobody wrote in: the template
    assert text_in(env, "Thanks, see you").status_code == 200
    with env["rt"].db.connect() as c:
        assert store.last_inbound(c, PHONE, "whatsapp") is not None
    send(env, "INV-2")
    assert meta.requests[-1].body["type"] == "text"
    assert meta.requests[-1].body["text"]["body"] == "Invoice due"


def test_messages_to_another_number_of_the_app_are_ignored(env: dict[str, Any]) -> None:
    send(env, "INV-1", alice())
    payload = message_payload("999999999999999", PHONE, "STOP", timestamp=int(time.time()))
    assert hook(env, payload).status_code == 200
    assert consent(env) == {}
    with env["rt"].db.connect() as c:
        assert store.last_inbound(c, PHONE) is None


def test_a_message_time_in_the_future_is_taken_as_now(env: dict[str, Any]) -> None:
    assert text_in(env, "hello", timestamp=int(time.time()) + 7 * 86400).status_code == 200
    with env["rt"].db.connect() as c:
        last = store.last_inbound(c, PHONE, "whatsapp")
    assert last is not None and last <= env["rt"].engine.clock.now()


# --------------------------------------------------------------------------- addresses


def test_stop_from_a_number_under_addresses_sms_turns_the_next_sms_into_no_consent(
    env: dict[str, Any],
) -> None:
    send(env, "INV-1", Recipient("c1", name="Alice", addresses={"sms": OTHER}))
    assert rows(env, "sms")[-1]["to_address"] == OTHER
    path = "/inbound/twilio/messages"
    form = {"MessageSid": "SMin1", "From": OTHER, "To": FROM, "Body": "STOP", "AccountSid": "AC1"}
    body, headers = twilio_form(env["twilio"].token, PUBLIC + path, form)
    assert env["client"].post(path, content=body, headers=headers).status_code == 200
    assert consent(env) == {"channels": {"sms": False}}
    send(env, "INV-2")
    last = rows(env, "sms")[-1]
    assert (last["state"], last["reason"]) == ("skipped", "no_consent")


def test_stop_from_a_number_under_addresses_whatsapp(env: dict[str, Any]) -> None:
    # the phone is for SMS; WhatsApp goes to another number (with or without whatsapp:)
    for i, stored in enumerate([OTHER, "whatsapp:" + OTHER]):
        send(env, f"INV-{i}", alice(addresses={"whatsapp": stored}))
        assert text_in(env, "STOP", sender=OTHER).status_code == 200
        assert consent(env) == {"channels": {"whatsapp": False}}
        assert text_in(env, "START", sender=OTHER).status_code == 200
        assert consent(env) == {}
    # a STOP from a number nobody has changes nothing
    assert text_in(env, "STOP", sender="+15550100077").status_code == 200
    assert consent(env) == {}


# --------------------------------------------------------------------------- the race


def events(env: dict[str, Any]) -> list[str]:
    with env["rt"].db.connect() as c:
        return list(
            c.execute(sa.select(webhook_events.c.type).order_by(webhook_events.c.id)).scalars()
        )


def test_statuses_that_arrive_before_the_send_is_recorded_apply_once_it_is(
    env: dict[str, Any],
) -> None:
    meta = env["meta"]
    answers: list[int] = []

    def call_back_first(wamid: str, body: Any) -> None:
        # Meta's status webhooks reach duly before its answer to the send does
        for state, at, error in [("sent", 1772442000, None), ("failed", 1772442005, 131026)]:
            payload = status_payload(
                meta.phone_number_id, wamid, state, PHONE, timestamp=at, error=error
            )
            answers.append(hook(env, payload).status_code)

    meta.on_accept = call_back_first
    send(env, "INV-1", alice())
    assert answers == [200, 200]
    (row,) = rows(env, "whatsapp")
    assert row["state"] == "sent"
    got = receipts(env, row["id"])
    assert [(r["status"], r["hard"]) for r in got] == [("accepted", False), ("undelivered", True)]
    with env["rt"].db.connect() as c:
        assert store.receipt_counts(c, since=None)["unmatched"] == 0  # attached to the send
    assert active_suppressions(env) == [PHONE]  # the effect applied once the send was recorded
    assert events(env).count("delivery.undelivered") == 1
    # replays afterwards, and the next sends (suppressed), apply nothing again
    meta.on_accept = None
    assert (
        status(env, row["receipt"], "failed", timestamp=1772442005, error=131026).status_code == 200
    )
    send(env, "INV-2")
    assert events(env).count("delivery.undelivered") == 1
    assert len(receipts(env, row["id"])) == 2
    last = rows(env, "whatsapp")[-1]
    assert (last["state"], last["reason"]) == ("skipped", "suppressed")
    with env["rt"].db.begin() as c:  # attached once: nothing is left to attach
        assert store.match_unmatched(c, [row["receipt"]], env["rt"].engine.clock.now()) == []
