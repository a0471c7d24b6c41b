"""Roles and the audit trail in the UI: what a viewer, an operator and an admin may do on
every route (server side), every operator action recorded with who did it and shown on the
object's page, the audit page (admins only) with its filters and exports, and users
managed by admins."""

from __future__ import annotations

import csv
import io
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from test_web_access import VIEWER_POSTS, _routes

from duly.core.model import Recipient
from duly.engine.service import SubjectInput
from duly.store.tables import audit_log, deliveries, subjects
from duly.web.users import UserStore
from webui import ADMIN, VIEWER, Web, make_web

OPERATOR = ("ops", "operator password 1")
INVOICE = "/subjects/invoice/INV-7"

# the POSTs an operator may make beyond a viewer's
OPERATOR_POSTS = VIEWER_POSTS | {
    "/subjects/1/1",  # hold and clear hold
    "/deliveries/1/send-now",
    "/deliveries/1/cancel",
    "/deliveries/1/retry",
    "/recipients/1/consent",
    "/recipients/1/unsuppress",
    "/reminders",
    "/reminders/1/edit",
    "/reminders/1/delete",
    "/reminders/1/send-now",
}
ADMIN_ONLY_PAGES = ("/audit", "/audit/export.csv", "/audit/export.jsonl", "/users")


@pytest.fixture
def web(tmp_path: Any, db_url: str) -> Any:
    """The UI over SQLite and over PostgreSQL (the trail's writes join the actions'
    transactions on both)."""
    w = make_web(tmp_path, database=db_url)
    try:
        yield w
    finally:
        w.close()


@pytest.fixture
def ops(web: Web) -> Web:
    UserStore(web.rt.db).create(OPERATOR[0], OPERATOR[1], "operator", datetime.now(UTC))
    web.engine.put_recipient(Recipient(id="alice", name="Alice", email="alice@example.com"))
    now = web.engine.clock.now()
    web.engine.upsert_subject(
        SubjectInput(
            "invoice",
            "INV-7",
            {"status": "sent", "due_at": (now + timedelta(days=10)).isoformat()},
            {"customer": "alice"},
        )
    )
    return web


def _pending(web: Web) -> int:
    """The first pending delivery of the invoice."""
    with web.rt.db.connect() as conn:
        did = conn.execute(
            sa.select(deliveries.c.id)
            .where(deliveries.c.subject == "invoice/INV-7", deliveries.c.state == "pending")
            .order_by(deliveries.c.id)
            .limit(1)
        ).scalar()
    assert did is not None
    return int(did)


def _state(web: Web, did: int) -> str:
    with web.rt.db.connect() as conn:
        return str(
            conn.execute(sa.select(deliveries.c.state).where(deliveries.c.id == did)).scalar()
        )


def _trail(web: Web) -> list[dict[str, Any]]:
    with web.rt.db.connect() as conn:
        return [
            dict(r) for r in conn.execute(sa.select(audit_log).order_by(audit_log.c.id)).mappings()
        ]


def test_an_operator_may_act_on_deliveries_but_not_templates_users_or_the_audit_page(
    ops: Web,
) -> None:
    ops.login(OPERATOR)
    token = ops.token("/account")
    refused = []
    for method, path in _routes(ops):
        if method != "POST" or path in OPERATOR_POSTS:
            continue
        r = ops.client.post(path, data={"csrftoken": token}, follow_redirects=False)
        assert r.status_code == 403, (path, r.status_code, r.text[:200])
        refused.append(path)
    assert "/templates/1" in refused and "/templates/1/restore" in refused
    assert "/users" in refused and "/users/1/role" in refused and "/users/1/delete" in refused
    for page in ADMIN_ONLY_PAGES:
        r = ops.get(page)
        assert r.status_code == 403 and "Only an admin" in r.text, page
    # the operator's role is explained, and the admin's links are not shown
    account = ops.get("/account").text
    assert "may hold, send now, cancel and retry" in account
    assert 'href="/users"' not in account and 'href="/audit"' not in account


def test_each_action_for_viewer_operator_and_admin(ops: Web) -> None:
    did = _pending(ops)
    # a viewer: refused with a page saying who may, and nothing changes
    ops.login(VIEWER)
    for action in ("send-now", "cancel"):
        r = ops.post(f"/deliveries/{did}/{action}", token_from="/account")
        assert r.status_code == 403 and "Only an operator or an admin" in r.text
    r = ops.post(INVOICE, {"action": "hold", "indefinite": "1"}, token_from="/account")
    assert r.status_code == 403
    assert ops.post("/recipients/alice/consent", token_from="/account").status_code == 403
    assert _state(ops, did) == "pending" and _trail(ops) == []
    assert "Send now" not in ops.get(f"/deliveries/{did}").text
    ops.logout()

    # an operator: the buttons are there, and every action works and is recorded
    ops.login(OPERATOR)
    page = ops.get(f"/deliveries/{did}").text
    assert "Send now" in page and "Cancel" in page
    assert (
        ops.post(INVOICE, {"action": "hold", "indefinite": "1"}, token_from=INVOICE).status_code
        == 303
    )
    assert ops.post(INVOICE, {"action": "clear"}, token_from=INVOICE).status_code == 303
    did = _pending(ops)
    assert ops.post(f"/deliveries/{did}/send-now", token_from="/account").status_code == 303
    assert ops.post(f"/deliveries/{did}/cancel", token_from="/account").status_code == 303
    assert _state(ops, did) == "cancelled"
    assert ops.post(f"/deliveries/{did}/retry", token_from="/account").status_code == 303
    assert _state(ops, did) == "pending"
    # a refused action (cancel twice is fine, retry a pending one is not) is not recorded
    r = ops.post(f"/deliveries/{did}/retry", token_from="/account")
    assert r.status_code == 303
    trail = _trail(ops)
    assert [(e["actor"], e["action"], e["object_kind"]) for e in trail] == [
        ("ops", "hold", "subject"),
        ("ops", "clear_hold", "subject"),
        ("ops", "send-now", "delivery"),
        ("ops", "cancel", "delivery"),
        ("ops", "retry", "delivery"),
    ]
    assert all(e["subject"] == "invoice/INV-7" and e["request_id"] for e in trail)
    assert json.loads(trail[0]["before"]) == {"hold_until": None}
    assert json.loads(trail[0]["after"]) == {"hold_until": "indefinite"}
    # consent and a one-off reminder
    r = ops.post(
        "/recipients/alice/consent", {"category": ["reminder"]}, token_from="/recipients/alice"
    )
    assert r.status_code == 303
    send_at = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M")
    r = ops.post(
        "/reminders",
        {"title": "Call back", "message": "Call Alice", "send_at": send_at,
         "recipients": "alice", "channels": "email", "subject": "invoice/INV-7",
         "category": "reminder"},
        token_from="/reminders/new",
    )  # fmt: skip
    assert r.status_code == 303, r.text[:500]
    # but no template, no user, no audit page
    assert (
        ops.post(
            "/templates/invoice-due-soon", {"part:email.txt": "x"}, token_from="/account"
        ).status_code
        == 403
    )
    assert ops.get("/users").status_code == 403
    ops.logout()

    # an admin may do all of it, and save a template
    ops.login(ADMIN)
    assert ops.post(f"/deliveries/{did}/send-now", token_from="/account").status_code == 303
    assert ops.get("/audit").status_code == 200 and ops.get("/users").status_code == 200
    actions = [(e["actor"], e["action"]) for e in _trail(ops)]
    assert ("ops", "consent") in actions and ("ops", "create") in actions
    assert actions[-1] == ("admin", "send-now")


def test_the_history_shows_who_did_what_on_the_subject_delivery_and_recipient(
    ops: Web, caplog: pytest.LogCaptureFixture
) -> None:
    ops.login(OPERATOR)
    with caplog.at_level(logging.INFO, logger="duly.audit"):
        ops.post(INVOICE, {"action": "hold", "indefinite": "1"}, token_from=INVOICE)
        did = _pending(ops)  # the one the hold keeps pending
        ops.post(f"/deliveries/{did}/send-now", token_from="/account")
        ops.post(
            "/recipients/alice/consent",
            {"category": ["promotional"]},
            token_from="/recipients/alice",
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "duly.audit"]
    assert "ops: subject invoice/INV-7: On hold until you clear it." in lines
    assert any(x.startswith(f"ops: delivery {did}: ") for x in lines)
    assert "ops: recipient alice: Consent saved." in lines
    ops.logout()
    ops.login(VIEWER)  # everyone who sees the object sees its history
    subject_page = ops.get(INVOICE).text
    history = subject_page[subject_page.index('id="h-audit-history"') :]
    assert "ops" in history and "On hold until you clear it" in history
    assert f"Delivery {did}</a>: Send now" in history
    assert "hold_until: none → indefinite" in history
    delivery = ops.get(f"/deliveries/{did}").text
    assert "Action history" in delivery and "Send now: made due now" in delivery
    recipient = ops.get("/recipients/alice").text
    history = recipient[recipient.index('id="h-audit-history"') :]
    assert "Consent of Alice changed" in history
    assert "reminder: none → no" in history and "promotional: none → yes" in history


def test_the_audit_page_filters_and_exports(ops: Web) -> None:
    ops.login(OPERATOR)
    ops.post(INVOICE, {"action": "hold", "indefinite": "1"}, token_from=INVOICE)
    did = _pending(ops)
    ops.post(f"/deliveries/{did}/send-now", token_from="/account")
    ops.logout()
    ops.login(ADMIN)
    ops.post(f"/deliveries/{did}/cancel", token_from="/account")
    page = ops.get("/audit").text
    assert page.count('class="audit-actor"') == 3
    assert ops.get("/audit?actor=ops").text.count('class="audit-actor"') == 2
    assert ops.get("/audit?kind=delivery").text.count('class="audit-actor"') == 2
    assert ops.get("/audit?object=invoice/INV-7").text.count('class="audit-actor"') == 3
    today = datetime.now(UTC).date()
    assert ops.get(f"/audit?to={today - timedelta(days=2)}").text.count('class="audit-actor"') == 0
    for q, field in (("kind=planet", "kind"), ("from=31-12-2026", "from"), ("before=x", "before")):
        r = ops.get(f"/audit?{q}")
        assert r.status_code == 400 and f'id="e-{field}"' in r.text or "cursor" in r.text, q
    r = ops.get("/audit/export.csv?actor=ops")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [x["action"] for x in rows] == ["send-now", "hold"]
    assert rows[1]["after"] == '{"hold_until": "indefinite"}'
    r = ops.get("/audit/export.jsonl")
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert [x["actor"] for x in lines] == ["admin", "ops", "ops"]
    assert lines[0]["at"].endswith("Z") and lines[0]["object_id"] == str(did)
    assert ops.get("/audit/export.xml").status_code == 404
    assert ops.get("/audit/export.csv?kind=planet").status_code == 400


def test_a_csv_export_does_not_run_formulas(ops: Web) -> None:
    from duly.store import audit

    with ops.rt.db.begin() as conn:
        audit.add_entry(
            conn, audit.Entry("=HYPERLINK(1)", "x", "user", "@SUM(1)", "+1"), datetime.now(UTC)
        )
    ops.login(ADMIN)
    row = next(csv.DictReader(io.StringIO(ops.get("/audit/export.csv").text)))
    assert (
        row["actor"] == "'=HYPERLINK(1)"
        and row["object_id"] == "'@SUM(1)"
        and row["summary"] == "'+1"
    )


def test_admins_manage_users_in_the_ui(ops: Web) -> None:
    ops.login(ADMIN)
    # create with a made password, shown once on the answer
    r = ops.post("/users", {"username": "frontdesk", "role": "operator"}, token_from="/users")
    assert r.status_code == 200 and "shown only this once" in r.text
    made = r.text.split('class="one-time-password">')[1].split("<")[0]
    assert len(made) >= 16 and made not in ops.get("/users").text
    # create with a typed password; bad input names the field
    r = ops.post(
        "/users",
        {"username": "bad name!", "role": "viewer", "password": "long enough 1"},
        token_from="/users",
    )
    assert r.status_code == 400 and 'id="e-username"' in r.text
    r = ops.post(
        "/users", {"username": "kim", "role": "viewer", "password": "short"}, token_from="/users"
    )
    assert r.status_code == 400 and 'id="e-password"' in r.text
    r = ops.post(
        "/users",
        {"username": "kim", "role": "boss", "password": "long enough 1"},
        token_from="/users",
    )
    assert r.status_code == 400 and "role must be one of" in r.text
    r = ops.post(
        "/users",
        {"username": "ops", "role": "viewer", "password": "long enough 1"},
        token_from="/users",
    )
    assert r.status_code == 400 and "already a user" in r.text
    # change a role, reset a password, delete
    assert (
        ops.post("/users/frontdesk/role", {"role": "viewer"}, token_from="/users").status_code
        == 303
    )
    assert UserStore(ops.rt.db).get_by_name("frontdesk").role == "viewer"  # type: ignore[union-attr]
    r = ops.post("/users/frontdesk/password", {"password": "a new password 1"}, token_from="/users")
    assert r.status_code == 303
    assert UserStore(ops.rt.db).authenticate("frontdesk", "a new password 1", datetime.now(UTC))
    assert ops.post("/users/frontdesk/delete", token_from="/users").status_code == 303
    assert UserStore(ops.rt.db).get_by_name("frontdesk") is None
    assert ops.post("/users/nobody/delete", token_from="/users").status_code == 404
    # an admin does not demote or delete themselves; the last admin stays
    r = ops.post("/users/admin/role", {"role": "viewer"}, token_from="/users")
    assert r.status_code == 400 and "your own role" in r.text
    assert ops.post("/users/admin/delete", token_from="/users").status_code == 400
    # without the CSRF token: refused
    r = ops.client.post(
        "/users", data={"username": "x1", "role": "admin", "password": "long enough 1"}
    )
    assert r.status_code == 403 and UserStore(ops.rt.db).get_by_name("x1") is None
    # every change is in the trail, by the admin, with no password in it
    trail = [e for e in _trail(ops) if e["object_kind"] == "user"]
    assert [(e["actor"], e["action"], e["object_id"]) for e in trail] == [
        ("admin", "create", "frontdesk"),
        ("admin", "role", "frontdesk"),
        ("admin", "password", "frontdesk"),
        ("admin", "delete", "frontdesk"),
    ]
    assert not any(made in json.dumps(e, default=str) for e in _trail(ops))


def test_the_last_admin_is_kept(ops: Web) -> None:
    users = UserStore(ops.rt.db)
    users.create("boss", "boss password 1", "admin", datetime.now(UTC))
    ops.login(("boss", "boss password 1"))
    assert (
        ops.post("/users/admin/role", {"role": "operator"}, token_from="/users").status_code == 303
    )
    # now boss is the only admin: another admin could not remove them; the store refuses
    from duly.core.errors import InvalidInput

    with pytest.raises(InvalidInput, match="last admin"):
        users.set_role("boss", "viewer", datetime.now(UTC), keep_admin=True)
    with pytest.raises(InvalidInput, match="last admin"):
        users.delete("boss", keep_admin=True)
    assert users.get_by_name("boss").role == "admin"  # type: ignore[union-attr]


def test_a_role_change_ends_the_users_sessions(ops: Web) -> None:
    from starlette.testclient import TestClient

    other = Web(ops.rt, TestClient(ops.client.app, base_url="http://127.0.0.1:8000"))
    other.login(OPERATOR)
    assert other.get("/account").status_code == 200
    ops.login(ADMIN)
    assert ops.post("/users/ops/role", {"role": "viewer"}, token_from="/users").status_code == 303
    r = other.client.get("/account", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


def test_the_hold_of_a_subject_is_recorded_with_its_end(ops: Web) -> None:
    ops.login(OPERATOR)
    until = (datetime.now(UTC) + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M")
    assert (
        ops.post(INVOICE, {"action": "hold", "until": until}, token_from=INVOICE).status_code == 303
    )
    with ops.rt.db.connect() as conn:
        held = conn.execute(
            sa.select(subjects.c.hold_until).where(subjects.c.key == "INV-7")
        ).scalar()
    (entry,) = _trail(ops)
    assert json.loads(entry["after"])["hold_until"] == held.replace(tzinfo=UTC).isoformat()


def test_the_cli_records_its_user_and_key_changes(tmp_path: Any) -> None:
    from click.testing import CliRunner

    from duly.cli import main
    from duly.store.db import make_engine

    db = f"sqlite:///{tmp_path / 'cli.db'}"
    run = CliRunner()
    pw = {"input": "long enough password\n"}
    for args, kw in (
        (["users", "create", "kim", "--role", "operator", "--password-stdin"], pw),
        (["users", "role", "kim", "admin"], {}),
        (["users", "passwd", "kim", "--password-stdin"], pw),
        (["users", "delete", "kim"], {}),
        (["keys", "create", "--name", "billing"], {}),
        (["keys", "revoke", "billing"], {}),
    ):
        r = run.invoke(main, [*args, "--database", db], **kw)
        assert r.exit_code == 0, (args, r.output)
    # a refused change is not recorded
    r = run.invoke(main, ["users", "role", "nobody", "viewer", "--database", db])
    assert r.exit_code != 0
    engine = make_engine(db)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(audit_log).order_by(audit_log.c.id)).mappings().all()
    engine.dispose()
    assert [(e["actor"], e["action"], e["object_kind"]) for e in rows] == [
        ("cli", "create", "user"),
        ("cli", "role", "user"),
        ("cli", "password", "user"),
        ("cli", "delete", "user"),
        ("cli", "create", "key"),
        ("cli", "revoke", "key"),
    ]
    assert json.loads(rows[1]["before"]) == {"role": "operator"}
    assert "API key billing created" in rows[4]["summary"]


def test_api_keys_actions_are_recorded_with_the_key_name(ops: Web) -> None:
    from duly.api.keys import KeyStore

    token, _ = KeyStore(ops.rt.db).create("billing", datetime.now(UTC))
    auth = {"Authorization": f"Bearer {token}", "X-Request-ID": "req-42"}
    did = _pending(ops)
    c = ops.client
    assert c.post(f"/v1/deliveries/{did}/send-now", headers=auth).status_code == 200
    assert c.post(f"/v1/deliveries/{did}/retry", headers=auth).status_code == 409  # refused
    assert c.post(f"/v1/deliveries/{did}/cancel", headers=auth).status_code == 200
    send_at = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    r = c.post(
        "/v1/reminders",
        json={"title": "Call", "message": "Call back", "send_at": send_at,
              "recipients": ["alice"], "channels": ["email"]},
        headers=auth,
    )  # fmt: skip
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    assert c.delete(f"/v1/reminders/{rid}", headers=auth).status_code in (200, 204)
    r = c.put("/v1/recipients/alice/preferences", json={"reminder": False}, headers=auth)
    assert r.status_code == 200, r.text
    assert c.delete("/v1/suppressions/nobody@x.io", headers=auth).status_code == 404  # refused
    # without a key: 401, nothing recorded
    assert c.post(f"/v1/deliveries/{did}/send-now").status_code == 401
    trail = _trail(ops)
    assert [(e["actor"], e["action"], e["object_kind"], e["object_id"]) for e in trail] == [
        ("api key billing", "send-now", "delivery", str(did)),
        ("api key billing", "cancel", "delivery", str(did)),
        ("api key billing", "create", "reminder", str(rid)),
        ("api key billing", "delete", "reminder", str(rid)),
        ("api key billing", "consent", "recipient", "alice"),
    ]
    assert trail[0]["request_id"] == "req-42" and trail[0]["subject"] == "invoice/INV-7"
    ops.login(VIEWER)
    page = ops.get(f"/deliveries/{did}").text
    assert "api key billing" in page[page.index('id="h-audit-history"') :]


def test_the_trail_is_shown_escaped(ops: Web) -> None:
    from duly.store import audit
    from webui import HOSTILE, HOSTILE_ATTR

    with ops.rt.db.begin() as conn:
        audit.add_entry(
            conn,
            audit.Entry(HOSTILE, "hold", "subject", "invoice/INV-7", HOSTILE_ATTR,
                        subject="invoice/INV-7", before={HOSTILE: HOSTILE_ATTR}, after={}),
            datetime.now(UTC),
        )  # fmt: skip
    ops.login(ADMIN)
    for url in ("/audit", INVOICE, f"/audit?actor={HOSTILE}"):
        page = ops.get(url).text
        assert HOSTILE not in page and HOSTILE_ATTR not in page, url
        assert "&lt;script&gt;" in page, url


def test_a_template_save_is_recorded_by_size_and_hash_not_text(ops: Web) -> None:
    import hashlib
    import html
    import re

    edit = "/templates/invoice-due-soon"
    ops.login(ADMIN)
    page = ops.get(edit).text
    m = re.search(r'name="part:email.txt"[^>]*>(.*?)</textarea>', page, re.S)
    assert m, "the editor shows the text part"
    body = html.unescape(m.group(1)).replace("Thank you", "Many thanks") + "\nSecret words 42\n"
    assert ops.post(edit, {"part:email.txt": body}, token_from=edit).status_code == 303
    (entry,) = [e for e in _trail(ops) if e["object_kind"] == "template"]
    assert (entry["actor"], entry["action"], entry["object_id"]) == (
        "admin",
        "save",
        "invoice-due-soon",
    )
    after = json.loads(entry["after"])["email.txt"]
    assert after == {"chars": len(body), "sha256": hashlib.sha256(body.encode()).hexdigest()}
    assert json.loads(entry["before"])["email.txt"]["chars"] > 0
    assert "Secret words" not in json.dumps(dict(entry), default=str)
    assert "Saved as version 1" in ops.get("/audit?kind=template").text
    # restoring the shipped wording is recorded too
    r = ops.post(f"{edit}/restore", {"version": "0"}, token_from=f"{edit}/history")
    assert r.status_code == 303
    last = [e for e in _trail(ops) if e["object_kind"] == "template"][-1]
    assert (last["action"], last["summary"]) == (
        "restore",
        "Restored the shipped wording as version 2",
    )


def test_a_reminders_page_shows_its_history(ops: Web) -> None:
    ops.login(OPERATOR)
    send_at = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M")
    form = {"title": "Call back", "message": "Call Alice", "send_at": send_at,
            "recipients": "alice", "channels": "email", "category": "reminder"}  # fmt: skip
    r = ops.post("/reminders", form, token_from="/reminders/new")
    assert r.status_code == 303, r.text[:300]
    url = r.headers["location"]
    r = ops.post(f"{url}/edit", {**form, "title": "Call back soon"}, token_from=f"{url}/edit")
    assert r.status_code == 303, r.text[:300]
    page = ops.get(url).text
    history = page[page.index('id="h-audit-history"') :]
    assert "Reminder “Call back” planned" in history
    assert "Reminder “Call back soon” changed" in history and "ops" in history
