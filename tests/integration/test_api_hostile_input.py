"""Hostile and malformed input to the HTTP API never gets a 5xx, on SQLite and PostgreSQL
alike: each is answered 4xx in the one error shape naming the field, nothing invalid is
stored, and a GET never fails on data stored before these checks existed.

The real app (API and pages) in-process over a migrated database of each backend, driven by
Starlette's TestClient; the limits are the documented ones of :mod:`duly.core.validation`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from duly.api.keys import KeyStore
from duly.store.tables import events, recipients, reminders, subjects
from webui import Web, make_web  # tests/ is on sys.path (tests/conftest.py)

DEEP = 900
LATE = "9999-12-31T23:59:59-12:00"  # past year 9999 in UTC
EARLY = "0001-01-01T00:00:00+14:00"  # before year 1 in UTC
SURROGATE = "\ud800"
HUGE_CURSOR = "ZDo5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5"  # "d:" and 30 nines


class Api:
    def __init__(self, web: Web) -> None:
        self.web = web
        key, _ = KeyStore(web.rt.db).create("tests", datetime.now(UTC))
        self.headers = {"Authorization": f"Bearer {key}"}

    def send_json(self, method: str, url: str, body: Any) -> Any:
        """``body`` as JSON with \\u escapes, as a client in any language may send it (a lone
        surrogate included: JSON can spell one, UTF-8 cannot)."""
        raw = json.dumps(body)  # ensure_ascii: a surrogate goes out as an escape
        headers = {**self.headers, "content-type": "application/json"}
        return self.web.client.request(method, url, content=raw, headers=headers)

    def __getattr__(self, method: str) -> Any:
        call = getattr(self.web.client, method)
        return lambda url, headers=None, **kw: call(
            url, headers={**self.headers, **(headers or {})}, **kw
        )


@pytest.fixture
def web(tmp_path: Path, db_url: str) -> Iterator[Web]:
    w = make_web(tmp_path, database=db_url)
    try:
        yield w
    finally:
        w.close()


@pytest.fixture
def api(web: Web, caplog: pytest.LogCaptureFixture) -> Iterator[Api]:
    a = Api(web)
    r = a.put("/v1/recipients/ada", json={"name": "Ada", "email": "ada@example.test"})
    assert r.status_code == 201, r.text
    caplog.set_level(logging.ERROR)
    yield a
    bugs = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not bugs, f"errors logged: {bugs}"


def check_error(r: Any, field: str | None, status: int = 422) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"code", "message", "field"}, err
    if field is not None:
        assert err["field"] == field, err
    return err  # type: ignore[no-any-return]


def deep(n: int, leaf: Any = 1) -> Any:
    v = leaf
    for _ in range(n):
        v = {"a": v}
    return v


def count(web: Web, table: sa.Table) -> int:
    with web.rt.db.connect() as c:
        return int(c.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def soon() -> str:
    return (datetime.now(UTC) + timedelta(days=2)).isoformat()


def invoice(**kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "attributes": {"status": "sent", "due_at": "2031-01-10"},
        "recipients": {"customer": "ada"},
    }
    body.update(kw)
    return body


# --------------------------------------------------------------------------- attributes


def test_deeply_nested_attributes_are_refused_and_not_stored(api: Api, web: Web) -> None:
    r = api.put("/v1/subjects/invoice/DEEP", json=invoice(attributes={"x": deep(DEEP)}))
    err = check_error(r, None)
    assert err["field"].startswith("attributes"), err
    assert "deep" in err["message"], err
    assert api.get("/v1/subjects/invoice/DEEP").status_code == 404
    assert count(web, subjects) == 0


def test_attributes_up_to_the_depth_limit_are_kept(api: Api) -> None:
    from duly.core.validation import MAX_DEPTH

    ok = invoice(attributes={"status": "draft", "x": deep(MAX_DEPTH - 1)})
    r = api.put("/v1/subjects/invoice/D32", json=ok)
    assert r.status_code == 200, r.text
    assert api.get("/v1/subjects/invoice/D32").json()["attributes"] == ok["attributes"]
    too = invoice(attributes={"status": "draft", "x": deep(MAX_DEPTH)})
    check_error(api.put("/v1/subjects/invoice/D33", json=too), None)


def test_deep_attributes_in_a_batch_fail_that_item_only(api: Api) -> None:
    body = {
        "subjects": [
            {"kind": "invoice", "key": "OK", **invoice()},
            {"kind": "invoice", "key": "BAD", **invoice(attributes={"x": deep(DEEP)})},
        ]
    }
    r = api.post("/v1/subjects:batch", json=body)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["ok"] for x in results] == [True, False], results
    assert results[1]["error"]["field"].startswith("attributes.x"), results
    assert api.get("/v1/subjects/invoice/BAD").status_code == 404
    assert api.get("/v1/subjects/invoice/OK").status_code == 200


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"kind": "invoice", "key": "a\x00b"}, "key"),
        ({"kind": "invoice", "key": "K", "attributes": {"n": "a\x00b"}}, "attributes.n"),
        ({"kind": "invoice", "key": "K", "attributes": {"n": SURROGATE}}, "attributes.n"),
        ({"kind": "invoice", "key": "K", "recipients": {"customer": SURROGATE}},
         "recipients.customer"),
        ({"kind": "invoice", "key": "K", "hold_until": LATE}, "hold_until"),
    ],
)  # fmt: skip
def test_a_bad_batch_item_is_refused_alone(api: Api, item: dict[str, Any], field: str) -> None:
    """(A kind or key with a lone surrogate is refused by the schema, 422 naming
    ``subjects.N.key`` for the whole batch: pydantic cannot read it as text.)"""
    body = {"subjects": [{"kind": "invoice", "key": "GOOD", **invoice()}, item]}
    r = api.send_json("POST", "/v1/subjects:batch", body)
    assert r.status_code == 200, r.text
    good, bad = r.json()["results"]
    assert good["ok"] and not bad["ok"], r.text
    assert bad["error"]["field"] == field, bad
    assert api.get("/v1/subjects/invoice/GOOD").status_code == 200


def test_deep_event_data_is_refused(api: Api, web: Web) -> None:
    assert api.put("/v1/subjects/invoice/E1", json=invoice()).status_code == 200
    body = {"id": "e1", "name": "paid", "subject": "invoice/E1", "data": {"x": deep(DEEP)}}
    err = check_error(api.post("/v1/events", json=body), None)
    assert err["field"].startswith("data"), err
    assert count(web, events) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (invoice(attributes={"note": SURROGATE}), "attributes.note"),
        (invoice(attributes={SURROGATE: 1}), "attributes"),
        (invoice(attributes={"list": ["ok", {"x": "a" + SURROGATE}]}), "attributes.list.1.x"),
        (invoice(recipients={"customer": SURROGATE}), "recipients.customer"),
        (invoice(recipients={"customer": ["ada", SURROGATE]}), "recipients.customer.1"),
    ],
)
def test_a_lone_surrogate_in_a_subject_is_refused(
    api: Api, web: Web, body: dict[str, Any], field: str
) -> None:
    err = check_error(api.send_json("PUT", "/v1/subjects/invoice/S1", body), field)
    assert "surrogate" in err["message"], err
    assert count(web, subjects) == 0


@pytest.mark.parametrize("field", ["name", "email", "phone", "locale"])
def test_a_lone_surrogate_in_a_recipient_is_refused(api: Api, web: Web, field: str) -> None:
    check_error(api.send_json("PUT", "/v1/recipients/bob", {field: "x" + SURROGATE}), field)
    assert count(web, recipients) == 1  # ada only


def test_nan_and_infinity_in_attributes_are_refused(api: Api) -> None:
    for raw in (b'{"attributes": {"x": NaN}}', b'{"attributes": {"x": -Infinity}}'):
        r = api.put(
            "/v1/subjects/invoice/NAN", content=raw, headers={"content-type": "application/json"}
        )
        assert 400 <= r.status_code < 500, r.text
    assert api.get("/v1/subjects/invoice/NAN").status_code == 404


# --------------------------------------------------------------------------- instants


@pytest.mark.parametrize("at", [LATE, EARLY, "9999-12-31T23:59:59Z", "1899-12-31T23:59:59Z"])
def test_hold_until_out_of_range_is_refused(api: Api, web: Web, at: str) -> None:
    err = check_error(api.put("/v1/subjects/invoice/H1", json=invoice(hold_until=at)), None)
    assert err["field"] == "hold_until", err
    body = {"subjects": [{"kind": "invoice", "key": "H2", **invoice(hold_until=at)}]}
    r = api.post("/v1/subjects:batch", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["error"]["field"] == "hold_until", r.text
    assert count(web, subjects) == 0


def test_hold_until_at_the_edges_of_the_range_is_kept(api: Api) -> None:
    for key, at in (("LO", "1900-01-01T00:00:00Z"), ("HI", "9998-12-31T23:59:59Z")):
        r = api.put(f"/v1/subjects/invoice/{key}", json=invoice(hold_until=at))
        assert r.status_code == 200, r.text
        assert api.get(f"/v1/subjects/invoice/{key}").status_code == 200


@pytest.mark.parametrize("at", [LATE, EARLY])
def test_a_reminder_send_at_out_of_range_is_refused(api: Api, web: Web, at: str) -> None:
    body = {"title": "t", "recipients": ["ada"], "send_at": at}
    check_error(api.post("/v1/reminders", json=body), "send_at")
    assert count(web, reminders) == 0
    made = api.post("/v1/reminders", json={**body, "send_at": soon()})
    assert made.status_code == 201, made.text
    check_error(api.patch(f"/v1/reminders/{made.json()['id']}", json={"send_at": at}), "send_at")


@pytest.mark.parametrize("param", ["from", "to"])
@pytest.mark.parametrize("at", [LATE, EARLY, "10000-01-01T00:00:00Z"])
def test_delivery_filters_out_of_range_are_refused(api: Api, param: str, at: str) -> None:
    check_error(api.get("/v1/deliveries", params={param: at}), param)


def test_stats_window_out_of_range_is_refused(api: Api) -> None:
    for param in ("from", "to"):
        for at in (LATE, EARLY):
            r = api.get("/v1/stats", params={param: at})
            assert 400 <= r.status_code < 500, (param, at, r.text)


# --------------------------------------------------------------------------- cursors


@pytest.mark.parametrize(
    "cursor",
    [HUGE_CURSOR, "ZDotMQ==", "ZDow", "not-base64!", "ZDo=", "eDox", "ZDox" * 20, "%00"],
)
def test_a_bad_cursor_is_refused_naming_it(api: Api, cursor: str) -> None:
    check_error(api.get("/v1/deliveries", params={"cursor": cursor}), "cursor")


@pytest.mark.parametrize("cursor", ["dzo5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5", "dzow"])
def test_a_bad_webhook_cursor_is_refused_naming_it(api: Api, cursor: str) -> None:
    check_error(api.get("/v1/webhooks/events", params={"cursor": cursor}), "cursor")


def test_a_good_cursor_still_pages(api: Api) -> None:
    for key in ("P1", "P2"):
        assert api.put(f"/v1/subjects/invoice/{key}", json=invoice()).status_code == 200
    first = api.get("/v1/deliveries", params={"limit": 1}).json()
    assert first["next_cursor"]
    more = api.get("/v1/deliveries", params={"limit": 1, "cursor": first["next_cursor"]})
    assert more.status_code == 200, more.text
    assert more.json()["items"][0]["id"] < first["items"][0]["id"]


# --------------------------------------------------------------------------- rules


@pytest.mark.parametrize(
    "cond",
    [
        "x < 99999999999999999999999d",
        "x < 99999999999999999999999",
        "x > 1e999",
        "x > now + 99999999999999999999h",
        "x > now - 9999999999w",
    ],
)
def test_rules_check_reports_a_huge_number_with_its_line(api: Api, cond: str) -> None:
    text = (
        f'rules:\n  - name: r\n    subject: invoice\n    on: paid\n    if: "{cond}"\n    to: [c]\n'
    )
    r = api.post("/v1/rules:check", json={"rules": text})
    assert r.status_code == 200, r.text
    out = r.json()
    if not out["ok"]:  # refused: said where
        (e,) = out["errors"]
        assert e["line"] == 5, e


# --------------------------------------------------------------------------- NUL


NUL = "a\x00b"


def test_nul_in_a_subject_path_is_refused(api: Api, web: Web) -> None:
    check_error(api.put("/v1/subjects/invoice/a%00b", json=invoice()), "key")
    check_error(api.put("/v1/subjects/inv%00oice/k", json=invoice()), "kind")
    check_error(api.get("/v1/subjects/invoice/a%00b"), "key")
    check_error(api.delete("/v1/subjects/invoice/a%00b"), "key")
    assert count(web, subjects) == 0


def test_nul_in_a_recipient_is_refused(api: Api, web: Web) -> None:
    check_error(api.put("/v1/recipients/a%00b", json={"name": "x"}), "rid")
    check_error(api.get("/v1/recipients/a%00b"), "rid")
    check_error(api.put("/v1/recipients/bob", json={"name": NUL}), "name")
    check_error(api.put("/v1/recipients/bob", json={"addresses": {"sms": NUL}}), "addresses.sms")
    check_error(api.put("/v1/recipients/bob", json={"timezone": NUL}), "timezone")
    check_error(api.get("/v1/recipients/a%00b/preferences"), "rid")
    assert count(web, recipients) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (invoice(attributes={"note": NUL}), "attributes.note"),
        (invoice(attributes={NUL: 1}), "attributes"),
        (invoice(recipients={"customer": NUL}), "recipients.customer"),
        (invoice(recipients={NUL: "ada"}), "recipients"),
    ],
)
def test_nul_in_a_subject_body_is_refused(
    api: Api, web: Web, body: dict[str, Any], field: str
) -> None:
    err = check_error(api.put("/v1/subjects/invoice/N1", json=body), field)
    assert "NUL" in err["message"], err
    assert count(web, subjects) == 0


@pytest.mark.parametrize("field", ["title", "message", "subject"])
def test_nul_in_a_reminder_is_refused(api: Api, web: Web, field: str) -> None:
    body: dict[str, Any] = {"title": "t", "recipients": ["ada"], "send_at": soon()}
    body[field] = "invoice/" + NUL if field == "subject" else NUL
    check_error(api.post("/v1/reminders", json=body), field)
    check_error(api.post("/v1/reminders", json={**body, field: None, "recipients": [NUL]}), None)
    assert count(web, reminders) == 0


def test_nul_in_an_event_is_refused(api: Api, web: Web) -> None:
    assert api.put("/v1/subjects/invoice/E2", json=invoice()).status_code == 200
    good = {"id": "e1", "name": "paid", "subject": "invoice/E2"}
    for field, value in (("id", NUL), ("name", NUL), ("subject", "invoice/" + NUL)):
        check_error(api.post("/v1/events", json={**good, field: value}), field)
    check_error(api.post("/v1/events", json={**good, "data": {"x": NUL}}), "data.x")
    assert count(web, events) == 0


@pytest.mark.parametrize("param", ["rule", "subject", "recipient", "channel", "state", "cursor"])
def test_nul_in_a_delivery_filter_is_refused(api: Api, param: str) -> None:
    check_error(api.get("/v1/deliveries", params={param: NUL}), param)


def test_nul_elsewhere_in_the_api_is_refused(api: Api) -> None:
    cases = [
        ("get", "/v1/webhooks/events", {"params": {"type": NUL}}, "type"),
        ("get", "/v1/webhooks/events", {"params": {"cursor": NUL}}, "cursor"),
        ("get", "/v1/recipients/ada/inbox", {"params": {"cursor": NUL}}, "cursor"),
        ("put", "/v1/templates/x%00y", {"json": {"channel": "email", "body": "hi"}}, "name"),
        ("post", "/v1/rules:check", {"json": {"rules": "rules: []\n#" + NUL}}, "rules"),
        ("delete", "/v1/suppressions/a%00b", {}, "address"),
        ("put", "/v1/recipients/ada/preferences", {"json": {"channels": {NUL: True}}}, None),
        ("post", "/v1/subjects/invoice/a%00b/ack", {"json": {"rule": "invoice-reminders"}}, "key"),
        ("post", "/v1/subjects/invoice/E/ack", {"json": {"rule": NUL}}, "rule"),
    ]
    for method, url, kw, field in cases:
        r = getattr(api, method)(url, **kw)
        assert 400 <= r.status_code < 500, (url, r.status_code, r.text)
        if field is not None:
            assert r.json()["error"]["field"] == field, (url, r.text)


def test_nul_in_a_template_body_is_refused(api: Api) -> None:
    body = {"channel": "email", "body": "Subject: x\n\nhello " + NUL}
    check_error(api.put("/v1/templates/invoice-due-soon", json=body), "body")
    check_error(api.put("/v1/templates/invoice-due-soon", json={"parts": [body]}), "parts.0.body")
    check_error(api.post("/v1/templates/invoice-due-soon/preview", json=body), "body")
    assert "hello" not in api.get("/v1/templates/invoice-due-soon").text


# --------------------------------------------------------------------------- stored data


def _store_subject(web: Web, key: str, attributes: Any, recipients: Any) -> None:
    now = datetime.now(UTC)
    with web.rt.db.begin() as c:
        c.execute(
            sa.insert(subjects).values(
                kind="invoice",
                key=key,
                attributes=attributes,
                recipients=recipients,
                revision=1,
                acknowledged=[],
                created_at=now,
                updated_at=now,
            )
        )


def test_a_subject_stored_with_deep_attributes_can_be_read(api: Api, web: Web) -> None:
    _store_subject(web, "OLD-DEEP", {"x": deep(DEEP)}, {"customer": ["ada"]})
    r = api.get("/v1/subjects/invoice/OLD-DEEP")
    assert r.status_code == 200, r.text
    assert r.json()["key"] == "OLD-DEEP"
    web.login()
    page = web.get("/subjects/invoice/OLD-DEEP")
    assert page.status_code == 200, page.text[:300]
    assert web.get("/subjects").status_code == 200


def test_a_subject_stored_with_a_surrogate_can_be_read(api: Api, web: Web) -> None:
    if web.rt.engine.store.postgres:
        pytest.skip("PostgreSQL never stored a lone surrogate (its json type refuses one)")
    _store_subject(web, "OLD-SUR", {"note": "x" + SURROGATE}, {"customer": [SURROGATE]})
    r = api.get("/v1/subjects/invoice/OLD-SUR")
    assert r.status_code == 200, r.text
    assert r.json()["attributes"]["note"] == "x\ufffd"
    web.login()
    page = web.get("/subjects/invoice/OLD-SUR")
    assert page.status_code == 200, page.text[:300]


@pytest.mark.parametrize("path", ["/u/a%00b", "/a/a%00b", "/u/" + "x" * 3000, "/a/%ED%A0%80"])
def test_link_pages_answer_a_hostile_token_with_a_4xx_page(api: Api, web: Web, path: str) -> None:
    for r in (web.client.get(path), web.client.post(path, data={"form": "preferences"})):
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text[:300])
