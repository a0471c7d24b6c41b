"""The email providers' event webhooks (issue 16): SendGrid's Signed Event Webhook, Mailgun's
signed webhooks and Amazon SES events through SNS, on SQLite and PostgreSQL.

Messages go out through the local fakes of the send APIs (tests/fakes/email_providers.py);
the events come back as each provider sends them, signed here the documented way
(tests/fakes/email_webhooks.py cites the documents), SNS's certificate made by the test's
own CA and served by a local HTTP server that the ses channel's ``sns_certificate_urls``
allows. The whole app (API and UI) answers, so the delivery and recipient pages are checked
as an operator sees them."""

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
from fakes.email_providers import FakeMailgun, FakeSendGrid, FakeSes
from fakes.email_webhooks import (
    FakeSns,
    SendGridSigner,
    mailgun_body,
    mailgun_event,
    sendgrid_event,
    ses_event,
)
from webui import Web, make_web

ALICE = "alice@example.test"
BOB = "bob@example.test"
MG_KEY = "mg-signing-" + "k" * 20

RULES = """
timezone: UTC
channels:
  sg:
    type: sendgrid
    from: billing@acme.test
    api_key: "${{T_SG_KEY}}"
    base_url: {sg_url}
    allow_private: true
    webhook_public_key: "${{T_SG_PUBLIC}}"
  mg:
    type: mailgun
    from: billing@acme.test
    domain: mg.acme.test
    api_key: "${{T_MG_KEY}}"
    base_url: {mg_url}
    allow_private: true
    webhook_signing_key: "${{T_MG_SIGNING}}"
  ses:
    type: ses
    from: billing@acme.test
    region: eu-west-1
    access_key_id: {ses_access}
    secret_access_key: "${{T_SES_SECRET}}"
    base_url: {ses_url}
    allow_private: true
    sns_topic_arns: ["{topic}"]
    sns_certificate_urls: ["{sns_url}/"]
webhooks:
  - url: http://127.0.0.1:9/events
    secret_env: T_EVENTS_SECRET
    events: [delivery.*]
rules:
{rules}
"""
RULE = """  - name: mail-{ch}
    subject: invoice
    on: {{change: status, to: sent}}
    to: [customer]
    channels: [{ch}]
    template: note
"""


@pytest.fixture
def env(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    (tmp_path / "templates").mkdir()
    for ch in ("sg", "mg", "ses"):
        (tmp_path / "templates" / f"note.{ch}.txt").write_text("Subject: Due\nInvoice due.\n")
    signer = SendGridSigner()
    with FakeSendGrid() as sg, FakeMailgun() as mg, FakeSes() as ses, FakeSns() as sns:
        monkeypatch.setenv("T_SG_KEY", sg.key)
        monkeypatch.setenv("T_SG_PUBLIC", signer.public_key)
        monkeypatch.setenv("T_MG_KEY", mg.key)
        monkeypatch.setenv("T_MG_SIGNING", MG_KEY)
        monkeypatch.setenv("T_SES_SECRET", ses.key)
        monkeypatch.setenv("T_EVENTS_SECRET", "whsec_" + "A" * 32)
        rules = tmp_path / "duly.yaml"
        rules.write_text(
            RULES.format(
                sg_url=sg.url,
                mg_url=mg.url,
                ses_url=ses.url,
                ses_access=ses.access_key_id,
                topic=sns.topic,
                sns_url=sns.url,
                rules="".join(RULE.format(ch=ch) for ch in ("sg", "mg", "ses")),
            )
        )
        web = make_web(tmp_path, rules=rules, database=db_url)
        try:
            yield {"web": web, "client": web.client, "signer": signer, "sns": sns}
        finally:
            for ch in web.rt.dispatcher.channels.values():
                ch.close()
            web.close()


def send(
    env: dict[str, Any], key: str = "INV-1", rid: str = "c1", email: str = ALICE
) -> dict[str, dict[str, Any]]:
    """Send one invoice mail to ``rid`` on each channel; the sent rows by channel."""
    rt = env["web"].rt
    eng = rt.engine
    eng.put_recipient(Recipient(rid, name=rid.upper(), email=email))
    eng.upsert_subject(SubjectInput("invoice", key, {"status": "draft"}, {"customer": rid}))
    eng.upsert_subject(SubjectInput("invoice", key, {"status": "sent"}, {"customer": rid}))
    while rt.dispatcher.run_once():
        pass
    with rt.db.connect() as c:
        q = sa.select(deliveries).where(deliveries.c.subject == f"invoice/{key}")
        rows = [dict(r) for r in c.execute(q).mappings()]
    got = {r["channel"]: r for r in rows}
    assert {r["state"] for r in rows} == {"sent"} and len(got) == 3, rows
    return got


def send_more(env: dict[str, Any], key: str, rid: str) -> list[dict[str, Any]]:
    """Another invoice to the (existing) recipient ``rid``: its rows, whatever their state."""
    rt = env["web"].rt
    rt.engine.upsert_subject(SubjectInput("invoice", key, {"status": "draft"}, {"customer": rid}))
    rt.engine.upsert_subject(SubjectInput("invoice", key, {"status": "sent"}, {"customer": rid}))
    while rt.dispatcher.run_once():
        pass
    with rt.db.connect() as c:
        q = sa.select(deliveries).where(deliveries.c.subject == f"invoice/{key}")
        return [dict(r) for r in c.execute(q).mappings()]


def receipts(env: dict[str, Any], delivery_id: int) -> list[dict[str, Any]]:
    with env["web"].rt.db.connect() as c:
        return store.receipts_of(c, delivery_id)


def suppressed(env: dict[str, Any]) -> list[tuple[str, str]]:
    with env["web"].rt.db.connect() as c:
        q = sa.select(suppressions.c.address, suppressions.c.channel).where(
            suppressions.c.cleared_at.is_(None)
        )
        return sorted(tuple(r) for r in c.execute(q))


def counts(env: dict[str, Any]) -> dict[str, int]:
    with env["web"].rt.db.connect() as c:
        return dict(store.receipt_counts(c))


def events(env: dict[str, Any]) -> list[str]:
    with env["web"].rt.db.connect() as c:
        return list(c.execute(sa.select(webhook_events.c.type)).scalars())


# --------------------------------------------------------------------------- SendGrid


def sendgrid(env: dict[str, Any], evs: list[dict[str, Any]], **kw: Any) -> Any:
    body = json.dumps(evs).encode()
    headers = env["signer"].headers(body, **kw)
    return env["client"].post("/inbound/sendgrid", content=body, headers=headers)


def test_sendgrid_signatures_missing_wrong_stale_and_replayed(env: dict[str, Any]) -> None:
    row = send(env)["sg"]
    ev = sendgrid_event("delivered", row["receipt"])
    body = json.dumps([ev]).encode()
    c = env["client"]
    plain = {"Content-Type": "application/json"}
    assert c.post("/inbound/sendgrid", content=body, headers=plain).status_code == 403
    other = SendGridSigner().headers(body)  # another account's key
    assert c.post("/inbound/sendgrid", content=body, headers=other).status_code == 403
    signed = env["signer"].headers(body)
    tampered = json.dumps([{**ev, "event": "bounce", "type": "bounce"}]).encode()
    assert c.post("/inbound/sendgrid", content=tampered, headers=signed).status_code == 403
    assert sendgrid(env, [ev], timestamp=int(time.time()) - 3600).status_code == 403  # stale
    assert receipts(env, row["id"]) == []
    assert c.post("/inbound/sendgrid", content=body, headers=signed).status_code == 200
    assert c.post("/inbound/sendgrid", content=body, headers=signed).status_code == 200  # replay
    assert sendgrid(env, [ev]).status_code == 200  # the same sg_event_id, signed anew
    (rec,) = receipts(env, row["id"])
    assert rec["status"] == "delivered" and rec["provider"] == "sendgrid"
    assert events(env).count("delivery.delivered") == 1


def test_sendgrid_out_of_order_duplicates_unknown_and_soft_bounces(env: dict[str, Any]) -> None:
    row = send(env)["sg"]
    xid = row["receipt"]
    now = int(time.time())
    delivered = sendgrid_event("delivered", xid, timestamp=now)
    processed = sendgrid_event("processed", xid, timestamp=now - 5)  # arrives after delivered
    dup = {**delivered, "sg_event_id": "another-id"}  # SendGrid sent the same event twice
    blocked = sendgrid_event(
        "bounce", xid, type="blocked", bounce_classification="Reputation", reason="550 blocked"
    )
    unknown = sendgrid_event("delivered", "NoSuchMessageId0000000")
    deferred = sendgrid_event("deferred", xid, response="400 try again later")
    r = sendgrid(env, [delivered, "not an event", processed, dup, blocked, unknown, deferred])
    assert r.status_code == 200, r.text
    got = receipts(env, row["id"])
    assert [x["status"] for x in got] == ["accepted", "delivered", "bounced"]
    assert got[2]["hard"] is False and "Reputation" in got[2]["detail"]
    assert suppressed(env) == []  # a soft bounce suppresses nothing
    assert counts(env)["unmatched"] == 1
    assert env["client"].post("/inbound/sendgrid", content=b"{}").status_code == 403
    assert sendgrid(env, {"not": "a list"}).status_code == 400  # type: ignore[arg-type]


# --------------------------------------------------------------------------- Mailgun


def mailgun(env: dict[str, Any], body: dict[str, Any]) -> Any:
    return env["client"].post("/inbound/mailgun", json=body)


def test_mailgun_signatures_missing_wrong_stale_and_replayed(env: dict[str, Any]) -> None:
    row = send(env)["mg"]
    ev = mailgun_event("delivered", row["receipt"])
    assert mailgun(env, {"event-data": ev}).status_code == 403  # unsigned
    assert mailgun(env, mailgun_body("not-the-key", ev)).status_code == 403
    stale = mailgun_body(MG_KEY, ev, timestamp=int(time.time()) - 3600)
    assert mailgun(env, stale).status_code == 403
    body = mailgun_body(MG_KEY, ev)
    assert mailgun(env, body).status_code == 200
    assert mailgun(env, body).status_code == 200  # a replay (the token again): nothing
    # Mailgun signs only timestamp + token: another event under a used token is a replay too
    forged = {**body, "event-data": {**ev, "event": "complained"}}
    assert mailgun(env, forged).status_code == 200
    assert env["client"].post("/inbound/mailgun", content=b"nope").status_code == 400
    assert [x["status"] for x in receipts(env, row["id"])] == ["delivered"]
    assert suppressed(env) == []


def test_mailgun_failed_permanent_and_temporary_duplicates_and_unknown(env: dict[str, Any]) -> None:
    row = send(env)["mg"]
    mid = row["receipt"]
    temp = mailgun_event(
        "failed",
        mid,
        severity="temporary",
        reason="generic",
        **{"delivery-status": {"code": 452, "message": "mailbox full"}},
    )
    assert mailgun(env, mailgun_body(MG_KEY, temp)).status_code == 200
    assert suppressed(env) == []
    body = mailgun_body(MG_KEY, mailgun_event("delivered", mid, timestamp=1_800_000_000.5))
    assert mailgun(env, body).status_code == 200
    assert mailgun(env, body).status_code == 200  # a replayed token: nothing
    again = mailgun_body(MG_KEY, body["event-data"])  # a duplicate event, a new token
    assert mailgun(env, again).status_code == 200
    unknown = mailgun_body(MG_KEY, mailgun_event("delivered", "nope@mg.acme.test"))
    assert mailgun(env, unknown).status_code == 200
    perm = mailgun_event("failed", f"<{mid}>", severity="permanent", reason="bounce")
    assert mailgun(env, mailgun_body(MG_KEY, perm)).status_code == 200
    got = receipts(env, row["id"])
    assert sorted((x["status"], x["hard"]) for x in got) == [
        ("bounced", False),
        ("bounced", True),
        ("delivered", False),
    ]
    assert suppressed(env) == [(ALICE, "mg")]
    assert counts(env)["unmatched"] == 1


# --------------------------------------------------------------------------- Amazon SES


def ses(env: dict[str, Any], msg: dict[str, Any]) -> Any:
    headers = {"Content-Type": "text/plain; charset=UTF-8", "x-amz-sns-message-type": msg["Type"]}
    return env["client"].post("/inbound/ses", content=json.dumps(msg), headers=headers)


def test_sns_signatures_missing_wrong_foreign_and_replayed(env: dict[str, Any]) -> None:
    row = send(env)["ses"]
    sns: FakeSns = env["sns"]
    delivered = ses_event("Delivery", row["receipt"])
    msg = sns.notification(delivered)
    unsigned = {k: v for k, v in msg.items() if k != "Signature"}
    assert ses(env, unsigned).status_code == 403
    assert (
        ses(env, {**msg, "Message": msg["Message"].replace("Delivery", "Bounce")}).status_code
        == 403
    )
    from fakes.email_webhooks import _certificate

    other_key, _ = _certificate("x", None, None)
    assert (
        ses(env, sns.sign({k: msg[k] for k in msg if k != "Signature"}, key=other_key)).status_code
        == 403
    )
    foreign = sns.sign({**msg, "TopicArn": "arn:aws:sns:eu-west-1:999999999999:evil"})
    assert ses(env, foreign).status_code == 403  # signed, but not a configured topic
    elsewhere = {**msg, "SigningCertURL": "https://evil.example/cert.pem"}
    assert ses(env, elsewhere).status_code == 403
    from datetime import UTC, datetime, timedelta

    old = sns.notification(
        ses_event("Delivery", row["receipt"]), at=datetime.now(UTC) - timedelta(hours=3)
    )
    assert ses(env, old).status_code == 403
    assert receipts(env, row["id"]) == []
    assert ses(env, msg).status_code == 200
    assert ses(env, msg).status_code == 200  # replay: nothing more
    v2 = sns.notification(delivered, version="2")  # SHA256withRSA
    assert ses(env, v2).status_code == 200  # a duplicate event in a new message: recorded once
    (rec,) = receipts(env, row["id"])
    assert rec["status"] == "delivered" and rec["provider"] == "ses"
    assert sns.cert_requests == 1  # fetched once, cached


def test_sns_subscription_is_confirmed_only_when_signed(env: dict[str, Any]) -> None:
    sns: FakeSns = env["sns"]
    sub = sns.subscription_confirmation()
    forged = {**sub, "Token": "t" * 64}
    assert ses(env, forged).status_code == 403
    assert sns.confirmed == []
    assert ses(env, sub).status_code == 200
    assert sns.confirmed == [sub["Token"]]
    # a subscription URL outside the allow-list is not followed (logged for the operator)
    off = {k: v for k, v in sub.items() if k != "Signature"}
    off["SubscribeURL"] = "https://evil.example/confirm?Token=x"
    off["MessageId"] = "another"
    assert ses(env, sns.sign(off)).status_code == 200
    assert sns.confirmed == [sub["Token"]]


def test_ses_bounces_out_of_order_and_unknown(env: dict[str, Any]) -> None:
    row = send(env)["ses"]
    sns: FakeSns = env["sns"]
    mid = row["receipt"]
    soft = ses_event("Bounce", mid, bounceType="Transient", bounceSubType="MailboxFull")
    for ev in (ses_event("Delivery", mid), soft, ses_event("Delivery", "0102-unknown")):
        assert ses(env, sns.notification(ev)).status_code == 200
    assert suppressed(env) == []
    got = receipts(env, row["id"])
    assert sorted((x["status"], x["hard"]) for x in got) == [
        ("bounced", False),
        ("delivered", False),
    ]
    assert counts(env)["unmatched"] == 1
    assert ses(env, sns.notification({"notificationType": "Received"})).status_code == 200


# --------------------------------------------------------------------------- done when


def page(web: Web, url: str) -> str:
    r = web.get(url)
    assert r.status_code == 200, r.text[:500]
    return str(r.text)


def test_an_ses_complaint_and_a_sendgrid_hard_bounce_suppress_and_show(env: dict[str, Any]) -> None:
    alice = send(env, "INV-1", "c1", ALICE)
    bob = send(env, "INV-2", "c2", BOB)
    sns: FakeSns = env["sns"]
    bounce = sendgrid_event(
        "bounce",
        alice["sg"]["receipt"],
        type="bounce",
        bounce_classification="Invalid Address",
        status="5.1.1",
        reason="550 5.1.1 The email account that you tried to reach does not exist",
    )
    assert sendgrid(env, [bounce]).status_code == 200
    complaint = ses_event("Complaint", bob["ses"]["receipt"])
    assert ses(env, sns.notification(complaint, version="2")).status_code == 200
    assert suppressed(env) == [(ALICE, "sg"), (BOB, "ses")]
    web: Web = env["web"]
    with web.rt.db.connect() as c:
        people = web.engine.store.get_recipients(c, ["c1", "c2"])
    assert people["c2"].consent == {"reminder": False}  # the complaint withdrew consent
    assert people["c1"].consent == {}
    assert {"delivery.bounced", "delivery.complained"} <= set(events(env))
    web.login()
    sg_page = page(web, f"/deliveries/{alice['sg']['id']}")
    assert "Provider reports" in sg_page and ">bounced<" in sg_page and "(permanent)" in sg_page
    assert "Invalid Address" in sg_page
    ses_page = page(web, f"/deliveries/{bob['ses']['id']}")
    assert "Provider reports" in ses_page and ">complained<" in ses_page
    first = page(web, "/recipients/c1")
    assert "sendgrid reported bounced" in first
    assert f'href="/deliveries/{alice["sg"]["id"]}"' in first
    second = page(web, "/recipients/c2")
    assert "ses reported complained" in second
    assert f'href="/deliveries/{bob["ses"]["id"]}"' in second
    # the next reminders are skipped: alice's address is suppressed, bob opted out as well
    later = send_more(env, "INV-3", "c1")
    assert {(r["state"], r["reason"]) for r in later} == {("skipped", "suppressed")}
    later = send_more(env, "INV-4", "c2")
    assert {(r["state"], r["reason"]) for r in later} == {("skipped", "no_consent")}


def test_bodies_that_are_not_json_or_nest_too_deep_are_400(env: dict[str, Any]) -> None:
    deep = b'{"a":' * 5000  # json.loads gives up with RecursionError: never a 500
    c = env["client"]
    r = c.post("/inbound/sendgrid", content=deep, headers=env["signer"].headers(deep))
    assert r.status_code == 400, r.text
    for path in ("/inbound/mailgun", "/inbound/ses"):
        assert c.post(path, content=deep).status_code == 400
        assert c.post(path, content=b"\xff\xfe").status_code == 400
