"""The HTTP API (docs/reference/http-api.md) over real HTTP: one `duly serve` process for the module
(tests/live.py), raw httpx requests, the answers checked status by status and field by field.

Known API bugs have a test of their own marked ``xfail(strict=True)``: it fails loudly (XPASS)
once the bug is fixed, so the marker is removed with the fix.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import pytest

from live import DULY, Live, live_server, make_key  # tests/ is on sys.path (conftest.py)

T = TypeVar("T")

RULES = """\
timezone: Europe/London
rules:
  - name: invoice-reminders
    subject: invoice
    if: "status == 'sent'"
    to: [customer]
    steps:
      - {name: due-soon, at: "due_at - 3d"}
      - {name: overdue, at: "due_at + 1d"}
  - name: invoice-viewed
    subject: invoice
    on: invoice.viewed
    to: [customer]
"""
TEMPLATE = "Subject: {{ subject.key }}: {{ step.name if step else 'viewed' }}\nHello\n"

# Far enough ahead that nothing planned from it comes due during the tests.
FAR = datetime(2030, 3, 15, 12, 0, tzinfo=UTC)
ANY = object()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("api")
    (tmp / "templates").mkdir()
    for name in ("invoice-reminders", "invoice-viewed"):
        (tmp / "templates" / f"{name}.email.txt").write_text(TEMPLATE)
    (tmp / "duly.yaml").write_text(RULES)
    with live_server(tmp, rules=tmp / "duly.yaml") as server:
        yield server


@pytest.fixture(scope="module")
def api(live: Live) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {live.key}"}
    with httpx.Client(base_url=live.url, headers=headers, timeout=10) as c:
        yield c


def check_error(
    r: httpx.Response, status: int, code: str | None = None, field: Any = ANY
) -> dict[str, Any]:
    """``r`` is an error in the API's one shape, with that status (and code, and field)."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert list(body) == ["error"], body
    err = body["error"]
    assert set(err) == {"code", "message", "field"}, err
    assert isinstance(err["code"], str) and err["code"], err
    assert isinstance(err["message"], str) and err["message"], err
    assert err["field"] is None or isinstance(err["field"], str), err
    if code is not None:
        assert err["code"] == code, err
    if field is not ANY:
        assert err["field"] == field, err
    return err  # type: ignore[no-any-return]


def wait_for(fn: Callable[[], T | None], what: str, timeout: float = 10.0) -> T:
    end = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def invoice(due: datetime, customer: str = "ada", status: str = "sent") -> dict[str, Any]:
    return {
        "attributes": {"status": status, "due_at": iso(due), "amount": 120},
        "recipients": {"customer": customer},
    }


@pytest.fixture(scope="module", autouse=True)
def key_revoked_in_use(live: Live) -> dict[str, str]:
    """A key used once, then revoked, at the start of the module: by the time the test
    that looks at it runs, the server's 5 s cache of good keys has expired."""
    key = make_key(live.database, live.env, name="revoked-in-use")
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{live.url}/v1/rules", headers=headers).status_code == 200
    revoke(live, "revoked-in-use")
    return headers


@pytest.fixture(scope="module", autouse=True)
def recipients(api: httpx.Client) -> None:
    for rid in ("ada", "pager"):
        r = api.put(f"/v1/recipients/{rid}", json={"name": rid, "email": f"{rid}@example.com"})
        assert r.status_code in (200, 201), r.text


# --------------------------------------------------------------------------- documents


SPEC_OPERATIONS = {
    ("put", "/v1/recipients/{rid}"),
    ("get", "/v1/recipients/{rid}"),
    ("delete", "/v1/recipients/{rid}"),
    ("put", "/v1/subjects/{kind}/{key}"),
    ("get", "/v1/subjects/{kind}/{key}"),
    ("delete", "/v1/subjects/{kind}/{key}"),
    ("post", "/v1/subjects:batch"),
    ("post", "/v1/events"),
    ("get", "/v1/deliveries"),
    ("get", "/v1/deliveries/{did}"),
    ("post", "/v1/deliveries/{did}/send-now"),
    ("post", "/v1/deliveries/{did}/cancel"),
    ("post", "/v1/deliveries/{did}/retry"),
    ("post", "/v1/reminders"),
    ("get", "/v1/reminders/{rid}"),
    ("patch", "/v1/reminders/{rid}"),
    ("delete", "/v1/reminders/{rid}"),
    ("get", "/v1/rules"),
    ("post", "/v1/rules:check"),
    ("post", "/v1/simulate"),
    ("get", "/healthz"),
    ("get", "/readyz"),
}


def test_openapi_document_and_docs_page_are_served(live: Live) -> None:
    doc = httpx.get(f"{live.url}/openapi.json")
    assert doc.status_code == 200
    spec = doc.json()
    assert spec["openapi"].startswith("3.") and spec["info"]["title"] == "duly"
    ops = {(m, p) for p, item in spec["paths"].items() for m in item}
    assert SPEC_OPERATIONS <= ops, SPEC_OPERATIONS - ops
    page = httpx.get(f"{live.url}/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in page.text


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_everything_from_the_server_itself(live: Live, page: str) -> None:
    """An offline server's docs work: no CDN, no font service; every URL the page loads is
    the server's own and answers 200."""
    r = httpx.get(f"{live.url}{page}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    urls = re.findall(
        r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url\s*:\s*["']([^"']+)["']""", r.text
    )
    found = {u for pair in urls for u in pair if u}
    external = sorted(u for u in found if re.match(r"(?:[a-z]+:)?//", u))
    assert external == [], external
    assert "/openapi.json" in found
    scripts = [u for u in found if u.endswith(".js")]
    assert scripts, r.text
    for url in sorted(found):
        got = httpx.get(f"{live.url}{url}")
        assert got.status_code == 200, url
        assert len(got.content) > 0, url
    assert not re.search(r"https?://(?!127\.0\.0\.1)[^\s\"']*\.(?:js|css)", r.text)


def test_health_needs_no_key(live: Live) -> None:
    assert httpx.get(f"{live.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{live.url}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ok",
        "checks": {"database": "ok", "dispatcher": "ok"},
        "channels": {"email": "closed", "inbox": "closed"},  # circuit breakers, reported
    }


# --------------------------------------------------------------------------- API keys


def v1_operations(live: Live) -> list[tuple[str, str]]:
    """Every /v1 operation of the OpenAPI document, with sample path parameters."""
    spec = httpx.get(f"{live.url}/openapi.json").json()
    # ids no other test uses: the requests made with the right key must not touch its records
    sample = {"kind": "invoice", "key": "auth-probe", "did": "987654321", "rid": "987654321"}
    out = []
    for path, item in spec["paths"].items():
        if not path.startswith("/v1/"):
            continue
        url = re.sub(r"\{(\w+)\}", lambda m: sample.get(m.group(1), "auth-probe"), path)
        out += [(method.upper(), url) for method in item if method != "parameters"]
    return out


def revoke(live: Live, name: str) -> None:
    subprocess.run(
        [*DULY, "keys", "revoke", name, "--database", live.database],
        env=live.env,
        check=True,
        capture_output=True,
    )


def test_every_v1_operation_refuses_a_missing_bad_or_revoked_key(
    live: Live, api: httpx.Client
) -> None:
    revoked = make_key(live.database, live.env, name="revoked-before-use")
    revoke(live, "revoked-before-use")
    ops = v1_operations(live)
    assert len(ops) >= len([o for o in SPEC_OPERATIONS if o[1].startswith("/v1/")])
    refusals = {
        "none": {},
        "empty bearer": {"Authorization": "Bearer"},
        "not bearer": {"Authorization": f"Basic {live.key}"},
        "unknown key": {"Authorization": "Bearer duly_" + "A" * 43},
        "not a key": {"Authorization": "Bearer hunter2"},
        "revoked key": {"Authorization": f"Bearer {revoked}"},
    }
    with httpx.Client(base_url=live.url, timeout=10) as anon:
        for method, url in ops:
            body = b"{}" if method in ("POST", "PUT", "PATCH") else None
            json_header = {"Content-Type": "application/json"} if body else {}
            for why, headers in refusals.items():
                r = anon.request(method, url, content=body, headers={**headers, **json_header})
                err = check_error(r, 401, "unauthorized", None)
                assert "key" in err["message"], (method, url, why, err)
            # the same request with the right key gets past the check (a stream answers
            # 200 and never ends: its status line is enough)
            if url.endswith("/stream"):
                with api.stream(method, url) as ok:
                    assert ok.status_code == 200, (method, url)
                continue
            ok = api.request(method, url, content=body, headers=json_header)
            assert ok.status_code != 401, (method, url, ok.text)


def test_bug_malformed_json_without_a_key_is_401(live: Live) -> None:
    r = httpx.put(
        f"{live.url}/v1/recipients/x",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    check_error(r, 401, "unauthorized")


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "method,path",
    [
        ("PUT", "/v1/recipients/j1"),
        ("PUT", "/v1/subjects/invoice/j1"),
        ("POST", "/v1/subjects:batch"),
        ("POST", "/v1/events"),
        ("POST", "/v1/reminders"),
        ("PATCH", "/v1/reminders/1"),
        ("POST", "/v1/simulate"),
    ],
)
def test_malformed_json_is_400_invalid_json(api: httpx.Client, method: str, path: str) -> None:
    for body in (b'{"name": ', b"{'single': 'quotes'}", b"\xff\xfe", b"{} trailing"):
        r = api.request(method, path, content=body, headers={"Content-Type": "application/json"})
        check_error(r, 400, "invalid_json", None)


IN_A_WEEK = iso(datetime.now(UTC) + timedelta(days=7))
REMINDER = {"title": "Call back", "recipients": ["ada"], "send_at": IN_A_WEEK}

REFUSED: list[tuple[str, str, str, Any, str, Any]] = [
    # method, path, what, JSON body (None: no body), code, field
    ("PUT", "/v1/recipients/bad1", "wrong type", {"name": 5}, "invalid", "name"),
    ("PUT", "/v1/recipients/bad1", "unknown field", {"nickname": "x"}, "invalid", "nickname"),
    ("PUT", "/v1/recipients/bad1", "bad consent", {"consent": {"reminder": "maybe"}}, "invalid", "consent.reminder"),
    ("PUT", "/v1/recipients/bad1", "unknown timezone", {"timezone": "Mars/Olympus"}, "invalid", "timezone"),
    ("PUT", "/v1/recipients/bad1", "a list, not an object", [], "invalid", None),
    ("PUT", "/v1/subjects/invoice/bad1", "attributes not an object", {"attributes": [1]}, "invalid", "attributes"),
    ("PUT", "/v1/subjects/invoice/bad1", "malformed date", {"hold_until": "tomorrow"}, "invalid", "hold_until"),
    ("PUT", "/v1/subjects/invoice/bad1", "date without offset", {"hold_until": "2030-01-01T09:00:00"}, "invalid", "hold_until"),
    ("PUT", "/v1/subjects/invoice/bad1", "recipient id not a string", {"recipients": {"customer": 5}}, "invalid", ANY),
    ("POST", "/v1/events", "unknown subject", {"id": "e-bad1", "name": "invoice.viewed", "subject": "invoice/nope"}, "unknown_subject", "subject"),
    ("POST", "/v1/events", "subject not KIND/KEY", {"id": "e-bad2", "name": "invoice.viewed", "subject": "invoice"}, "invalid", "subject"),
    ("POST", "/v1/events", "no id", {"name": "invoice.viewed", "subject": "invoice/x"}, "invalid", "id"),
    ("POST", "/v1/events", "data not an object", {"id": "e-bad3", "name": "n", "subject": "invoice/x", "data": 3}, "invalid", "data"),
    ("GET", "/v1/deliveries?from=yesterday", "malformed date", None, "invalid", "from"),
    ("GET", "/v1/deliveries?to=2030-01-01T00:00:00", "date without offset", None, "invalid", "to"),
    ("GET", "/v1/deliveries?state=lost", "unknown state", None, "invalid", "state"),
    ("GET", "/v1/deliveries?limit=0", "limit too small", None, "invalid", "limit"),
    ("GET", "/v1/deliveries?limit=501", "limit too large", None, "invalid", "limit"),
    ("GET", "/v1/deliveries?cursor=bm9wZQ", "a cursor not given out", None, "invalid", "cursor"),
    ("GET", "/v1/deliveries/abc", "id not a number", None, "invalid", ANY),
    ("POST", "/v1/reminders", "malformed date", {**REMINDER, "send_at": "soon"}, "invalid", "send_at"),
    ("POST", "/v1/reminders", "date without offset", {**REMINDER, "send_at": IN_A_WEEK[:-1]}, "invalid", "send_at"),
    ("POST", "/v1/reminders", "send_at in the past", {**REMINDER, "send_at": "2020-01-01T00:00:00Z"}, "invalid", "send_at"),
    ("POST", "/v1/reminders", "no channel", {**REMINDER, "channels": []}, "invalid", "channels"),
    ("POST", "/v1/reminders", "unknown channel", {**REMINDER, "channels": ["pigeon"]}, "invalid", "channels"),
    ("POST", "/v1/reminders", "no recipient", {**REMINDER, "recipients": []}, "invalid", "recipients"),
    ("POST", "/v1/reminders", "no title", {"recipients": ["ada"], "send_at": IN_A_WEEK}, "invalid", "title"),
    ("POST", "/v1/reminders", "unknown subject", {**REMINDER, "subject": "invoice/nope"}, "unknown_subject", "subject"),
    ("POST", "/v1/reminders", "unknown category", {**REMINDER, "category": "urgent"}, "invalid", "category"),
    ("POST", "/v1/rules:check", "no rules", {}, "invalid", "rules"),
    ("POST", "/v1/simulate", "rules not valid", {"rules": "rules: [", "timeline": ""}, "invalid_rules", "rules"),
    ("POST", "/v1/simulate", "timeline not valid", {"rules": "rules: []\n", "timeline": "{nope\n"}, "invalid_timeline", "timeline"),
]  # fmt: skip


@pytest.mark.parametrize(
    "method,path,what,body,code,field", REFUSED, ids=[f"{r[0]} {r[1]} {r[2]}" for r in REFUSED]
)
def test_bad_input_is_refused_with_code_and_field(
    api: httpx.Client,
    method: str,
    path: str,
    what: str,
    body: Any,
    code: str,
    field: Any,
) -> None:
    r = api.request(method, path, json=body) if body is not None else api.request(method, path)
    check_error(r, 422, code, field)


def test_a_refused_request_changes_nothing(api: httpx.Client) -> None:
    check_error(api.put("/v1/recipients/nothing-1", json={"timezone": "Mars/Olympus"}), 422)
    check_error(api.get("/v1/recipients/nothing-1"), 404)
    r = api.post(
        "/v1/events", json={"id": "e-nothing", "name": "invoice.viewed", "subject": "invoice/no"}
    )
    check_error(r, 422, "unknown_subject", "subject")
    # the refused event was not recorded: its id is still new
    assert api.put("/v1/subjects/invoice/no", json=invoice(FAR)).status_code == 200
    r = api.post(
        "/v1/events", json={"id": "e-nothing", "name": "invoice.viewed", "subject": "invoice/no"}
    )
    assert r.status_code == 202 and r.json() == {"id": "e-nothing", "accepted": True}


def test_an_attribute_that_is_not_a_date_is_reported_not_refused(api: httpx.Client) -> None:
    body = invoice(FAR)
    body["attributes"]["due_at"] = "next Tuesday"
    r = api.put("/v1/subjects/invoice/baddate", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["plan"] == []
    assert out["problems"] and all("due_at" in p for p in out["problems"])
    assert "next Tuesday" in out["problems"][0]


def test_bodies_over_the_limit_are_413(api: httpx.Client) -> None:
    big = b'{"name": "' + b"x" * 1_100_000 + b'"}'
    headers = {"Content-Type": "application/json"}
    # with a Content-Length, and streamed without one (chunked)
    check_error(api.put("/v1/recipients/big", content=big, headers=headers), 413, "too_large")

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 64_000):
            yield big[i : i + 64_000]

    r = api.put("/v1/recipients/big", content=chunks(), headers=headers)
    check_error(r, 413, "too_large")
    check_error(api.get("/v1/recipients/big"), 404)


NOT_FOUND = [
    ("GET", "/v1/recipients/nobody"),
    ("DELETE", "/v1/recipients/nobody"),
    ("GET", "/v1/subjects/invoice/nothing"),
    ("GET", "/v1/deliveries/987654321"),
    ("POST", "/v1/deliveries/987654321/send-now"),
    ("POST", "/v1/deliveries/987654321/cancel"),
    ("POST", "/v1/deliveries/987654321/retry"),
    ("GET", "/v1/reminders/987654321"),
    ("PATCH", "/v1/reminders/987654321"),
    ("DELETE", "/v1/reminders/987654321"),
    ("GET", "/v1/no-such-thing"),
]


@pytest.mark.parametrize("method,path", NOT_FOUND, ids=[" ".join(x) for x in NOT_FOUND])
def test_unknown_records_are_404(api: httpx.Client, method: str, path: str) -> None:
    body = {"title": "x"} if method == "PATCH" else None
    check_error(api.request(method, path, json=body), 404, "not_found")


def test_bug_deleting_an_unknown_subject_is_404(api: httpx.Client) -> None:
    check_error(api.delete("/v1/subjects/invoice/never-was"), 404, "not_found")


def test_gap_a_key_with_a_slash_can_be_read_back(api: httpx.Client) -> None:
    r = api.post("/v1/subjects:batch", json={"subjects": [{"kind": "invoice", "key": "2026/7"}]})
    assert r.json()["results"][0]["ok"] is True
    assert api.get("/v1/subjects/invoice/2026%2F7").status_code == 200


# --------------------------------------------------------------------------- recipients


def test_recipient_create_replace_read_delete(api: httpx.Client) -> None:
    body = {
        "name": "Grace",
        "email": "grace@example.com",
        "timezone": "America/New_York",
        "locale": "en_US",
        "addresses": {"slack": "U123"},
        "consent": {"promotional": True, "channels": {"sms": False}},
    }
    r = api.put("/v1/recipients/grace", json=body)
    assert r.status_code == 201
    assert r.json() == {
        **body,
        "id": "grace",
        "phone": None,
        "consent": {"promotional": True, "reminder": None, "channels": {"sms": False}, "rules": {}},
    }
    # a PUT is the whole state: what is left out is cleared
    r = api.put("/v1/recipients/grace", json={"name": "Grace H."})
    assert r.status_code == 200
    got = api.get("/v1/recipients/grace").json()
    assert got["name"] == "Grace H." and got["email"] is None and got["addresses"] == {}
    # deleting a recipient cancels its pending deliveries
    api.put("/v1/recipients/grace", json={"name": "Grace", "email": "grace@example.com"})
    plan = api.put("/v1/subjects/invoice/GRACE-1", json=invoice(FAR, "grace")).json()["plan"]
    assert len(plan) == 2
    r = api.delete("/v1/recipients/grace")
    assert r.status_code == 204 and r.content == b""
    check_error(api.get("/v1/recipients/grace"), 404, "not_found")
    for d in plan:
        got = api.get(f"/v1/deliveries/{d['id']}").json()
        assert (got["state"], got["reason"]) == ("cancelled", "recipient_removed")


def test_put_recipient_takes_the_id_of_the_path_in_the_body(api: httpx.Client) -> None:
    """The body has the fields of a timeline's recipient line, ``id`` included: the same id
    as the path is accepted, another one refused naming ``id`` (nothing stored)."""
    body = {"id": "hopper", "name": "Grace Hopper", "email": "gh@example.com"}
    r = api.put("/v1/recipients/hopper", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["id"] == "hopper" and r.json()["name"] == "Grace Hopper"
    r = api.put("/v1/recipients/hopper", json={**body, "name": "G. Hopper"})
    assert r.status_code == 200, r.text
    err = check_error(api.put("/v1/recipients/hopper", json={**body, "id": "ada"}), 422, field="id")
    assert "hopper" in err["message"] and "ada" in err["message"]
    check_error(api.put("/v1/recipients/nobody", json={**body, "id": "hopper"}), 422, field="id")
    check_error(api.get("/v1/recipients/nobody"), 404, "not_found")
    assert api.get("/v1/recipients/hopper").json()["name"] == "G. Hopper"
    check_error(api.put("/v1/recipients/hopper", json={**body, "id": 7}), 422, field="id")


# --------------------------------------------------------------------------- subjects


def test_put_subject_answers_with_its_plan_and_moves_it_when_the_date_changes(
    api: httpx.Client,
) -> None:
    r = api.put("/v1/subjects/invoice/PLAN-1", json=invoice(FAR))
    assert r.status_code == 200, r.text
    first = r.json()
    assert (first["kind"], first["key"], first["revision"]) == ("invoice", "PLAN-1", 1)
    assert first["recipients"] == {"customer": ["ada"]}
    plan = {d["step"]: d for d in first["plan"]}
    assert set(plan) == {"due-soon", "overdue"}
    assert plan["due-soon"]["planned_at"] == "2030-03-12T12:00:00Z"
    assert plan["overdue"]["planned_at"] == "2030-03-16T12:00:00Z"
    for d in plan.values():
        assert d["state"] == "pending" and d["rule"] == "invoice-reminders"
        assert (d["subject"], d["recipient"], d["channel"]) == ("invoice/PLAN-1", "ada", "email")

    later = FAR + timedelta(days=10)
    moved = api.put("/v1/subjects/invoice/PLAN-1", json=invoice(later)).json()
    assert moved["revision"] == 2
    new = {d["step"]: d for d in moved["plan"]}
    assert new["due-soon"]["planned_at"] == "2030-03-22T12:00:00Z"
    assert new["overdue"]["planned_at"] == "2030-03-26T12:00:00Z"
    # moved, not replaced: the same deliveries
    assert {s: d["id"] for s, d in new.items()} == {s: d["id"] for s, d in plan.items()}

    detail = api.get("/v1/subjects/invoice/PLAN-1").json()
    assert [d["id"] for d in detail["plan"]] == [d["id"] for d in moved["plan"]]
    assert detail["history"] == [] and detail["attributes"]["due_at"] == iso(later)

    # paid: no reminder is due any more
    paid = api.put("/v1/subjects/invoice/PLAN-1", json=invoice(later, status="paid")).json()
    assert paid["plan"] == []
    history = api.get("/v1/subjects/invoice/PLAN-1").json()["history"]
    assert sorted(d["id"] for d in history) == sorted(d["id"] for d in moved["plan"])
    assert {d["state"] for d in history} == {"cancelled"}


def test_delete_subject_cancels_its_pending_deliveries(api: httpx.Client) -> None:
    plan = api.put("/v1/subjects/invoice/DEL-1", json=invoice(FAR)).json()["plan"]
    r = api.delete("/v1/subjects/invoice/DEL-1")
    assert r.status_code == 204 and r.content == b""
    check_error(api.get("/v1/subjects/invoice/DEL-1"), 404, "not_found")
    for d in plan:
        got = api.get(f"/v1/deliveries/{d['id']}").json()
        assert (got["state"], got["reason"]) == ("cancelled", "subject_deleted")


def test_batch_answers_a_result_per_item_and_refuses_only_the_bad_one(
    api: httpx.Client,
) -> None:
    items = [
        {"kind": "invoice", "key": "B-1", **invoice(FAR)},
        {"kind": "in/voice", "key": "B-2", **invoice(FAR)},
        {"kind": "invoice", "key": "B-3", "attributes": {"status": "draft"}},
    ]
    r = api.post("/v1/subjects:batch", json={"subjects": items})
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["ok"], out["failed"]) == (2, 1)
    assert [(x["kind"], x["key"], x["ok"]) for x in out["results"]] == [
        ("invoice", "B-1", True),
        ("in/voice", "B-2", False),
        ("invoice", "B-3", True),
    ]
    good, bad, draft = out["results"]
    assert good["revision"] == 1 and good["planned"] == 2 and good["error"] is None
    assert draft["planned"] == 0
    assert bad["revision"] is None and bad["error"]["code"] == "invalid"
    assert bad["error"]["field"] == "kind" and "/" in bad["error"]["message"]
    assert api.get("/v1/subjects/invoice/B-1").status_code == 200
    assert api.get("/v1/subjects/invoice/B-3").status_code == 200


def test_batch_limits(api: httpx.Client) -> None:
    check_error(api.post("/v1/subjects:batch", json={"subjects": []}), 422, "invalid", "subjects")
    many = [{"kind": "invoice", "key": f"M-{i}"} for i in range(1001)]
    check_error(api.post("/v1/subjects:batch", json={"subjects": many}), 422, "invalid", "subjects")


# --------------------------------------------------------------------------- events


def test_an_event_id_is_an_idempotency_key(api: httpx.Client) -> None:
    api.put("/v1/subjects/invoice/EV-1", json=invoice(FAR))
    api.put("/v1/subjects/invoice/EV-2", json=invoice(FAR))
    ev = {"id": "view-1", "name": "invoice.viewed", "subject": "invoice/EV-1", "data": {"n": 1}}
    r = api.post("/v1/events", json=ev)
    assert (r.status_code, r.json()) == (202, {"id": "view-1", "accepted": True})
    for repeat in (ev, {**ev, "data": {"n": 2}}, {**ev, "subject": "invoice/EV-2"}):
        r = api.post("/v1/events", json=repeat)
        assert (r.status_code, r.json()) == (200, {"id": "view-1", "accepted": False})

    def fired(subject: str) -> int:
        params = {"rule": "invoice-viewed", "subject": subject}
        return len(api.get("/v1/deliveries", params=params).json()["items"])

    assert (fired("invoice/EV-1"), fired("invoice/EV-2")) == (1, 0)
    r = api.post("/v1/events", json={**ev, "id": "view-2"})
    assert (r.status_code, r.json()) == (202, {"id": "view-2", "accepted": True})
    assert fired("invoice/EV-1") == 2


# --------------------------------------------------------------------------- deliveries


def test_cursor_paging_over_120_deliveries_has_no_duplicates_or_gaps(
    api: httpx.Client,
) -> None:
    items = [{"kind": "invoice", "key": f"P-{i:03}", **invoice(FAR, "pager")} for i in range(60)]
    assert api.post("/v1/subjects:batch", json={"subjects": items}).json()["ok"] == 60
    every = api.get("/v1/deliveries", params={"recipient": "pager", "limit": 500}).json()
    assert every["next_cursor"] is None
    ids = [d["id"] for d in every["items"]]
    assert len(ids) == 120 and ids == sorted(ids, reverse=True)  # newest first

    seen: list[int] = []
    sizes = []
    cursor = None
    while True:
        params: dict[str, Any] = {"recipient": "pager", "limit": 7}
        if cursor:
            params["cursor"] = cursor
        page = api.get("/v1/deliveries", params=params).json()
        seen += [d["id"] for d in page["items"]]
        sizes.append(len(page["items"]))
        if len(sizes) == 1:  # deliveries made while paging do not shift the pages
            more = [{"kind": "invoice", "key": "P-new", **invoice(FAR, "pager")}]
            assert api.post("/v1/subjects:batch", json={"subjects": more}).json()["ok"] == 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    assert sizes == [7] * 17 + [1]
    # the first page now starts with the new ones
    top = api.get("/v1/deliveries", params={"recipient": "pager", "limit": 2}).json()
    assert {d["subject"] for d in top["items"]} == {"invoice/P-new"}


def test_delivery_filters(api: httpx.Client) -> None:
    api.put("/v1/subjects/invoice/F-1", json=invoice(FAR))
    got = api.get("/v1/deliveries", params={"subject": "invoice/F-1"}).json()["items"]
    assert sorted(d["step"] for d in got) == ["due-soon", "overdue"]
    due_soon = api.get(
        "/v1/deliveries",
        params={
            "subject": "invoice/F-1",
            "state": "pending",
            "rule": "invoice-reminders",
            "channel": "email",
            "from": "2030-03-12T12:00:00Z",  # inclusive
            "to": "2030-03-16T12:00:00+00:00",  # exclusive
        },
    ).json()["items"]
    assert [d["step"] for d in due_soon] == ["due-soon"]
    none = api.get("/v1/deliveries", params={"subject": "invoice/F-1", "state": "sent"}).json()
    assert none == {"items": [], "next_cursor": None}


def sent(api: httpx.Client, did: int) -> dict[str, Any] | None:
    d = api.get(f"/v1/deliveries/{did}").json()
    return d if d["state"] == "sent" else None


def test_send_now_cancel_retry_follow_the_state_rules(api: httpx.Client) -> None:
    plan = api.put("/v1/subjects/invoice/ACT-1", json=invoice(FAR)).json()["plan"]
    first, second = (d["id"] for d in sorted(plan, key=lambda d: d["planned_at"]))

    r = api.post(f"/v1/deliveries/{first}/cancel")
    assert r.status_code == 200
    assert (r.json()["state"], r.json()["reason"]) == ("cancelled", "manual")
    check_error(api.post(f"/v1/deliveries/{first}/cancel"), 409, "conflict", "state")
    check_error(api.post(f"/v1/deliveries/{first}/send-now"), 409, "conflict", "state")

    r = api.post(f"/v1/deliveries/{first}/retry")
    assert r.status_code == 200 and r.json()["state"] in ("pending", "sending", "sent")
    done = wait_for(lambda: sent(api, first), "the retried delivery to be sent")
    assert done["planned_at"] == "2030-03-12T12:00:00Z" and done["attempts"] == 1
    assert done["content"]["to"] == "ada@example.com"
    assert done["content"]["title"] == "ACT-1: due-soon"
    assert [h["outcome"] for h in done["history"]][-1] == "sent"
    for action in ("send-now", "cancel", "retry"):  # a sent delivery is never sent twice
        check_error(api.post(f"/v1/deliveries/{first}/{action}"), 409, "conflict", "state")

    r = api.post(f"/v1/deliveries/{second}/send-now")
    assert r.status_code == 200
    assert r.json()["planned_at"] == "2030-03-16T12:00:00Z"  # the plan is kept
    assert datetime.fromisoformat(r.json()["due_at"]) < datetime.now(UTC) + timedelta(seconds=5)
    wait_for(lambda: sent(api, second), "the delivery sent now")


# --------------------------------------------------------------------------- reminders


def test_reminder_lifecycle_while_pending(api: httpx.Client) -> None:
    r = api.post("/v1/reminders", json={**REMINDER, "channels": ["email"], "message": "Hi"})
    assert r.status_code == 201, r.text
    rem = r.json()
    assert rem["counts"] == {"total": 1, "pending": 1, "sent": 0, "overdue": 0, "failed": 0}
    assert [d["recipient"] for d in rem["deliveries"]] == ["ada"]
    r = api.patch(f"/v1/reminders/{rem['id']}", json={"title": "Call back today"})
    assert r.status_code == 200 and r.json()["title"] == "Call back today"
    assert r.json()["message"] == "Hi" and r.json()["send_at"] == IN_A_WEEK
    assert api.delete(f"/v1/reminders/{rem['id']}").status_code == 204
    check_error(api.get(f"/v1/reminders/{rem['id']}"), 404, "not_found")
    d = api.get(f"/v1/deliveries/{rem['deliveries'][0]['id']}").json()
    assert (d["state"], d["reason"]) == ("cancelled", "manual")


@pytest.fixture(scope="module")
def sent_reminder(api: httpx.Client) -> tuple[int, datetime]:
    """A one-off reminder due about a second from now, once it has been sent: its id and
    send_at."""
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    r = api.post("/v1/reminders", json={**REMINDER, "title": "Soon", "send_at": iso(soon)})
    assert r.status_code == 201, r.text
    rid = int(r.json()["id"])
    wait_for(
        lambda: api.get(f"/v1/reminders/{rid}").json()["counts"]["sent"] == 1,
        "the reminder to be sent",
    )
    return rid, soon


def test_a_sent_reminder_cannot_change(
    api: httpx.Client, sent_reminder: tuple[int, datetime]
) -> None:
    rid, _ = sent_reminder
    later = iso(datetime.now(UTC) + timedelta(days=1))
    r = api.patch(f"/v1/reminders/{rid}", json={"title": "Too late", "send_at": later})
    check_error(r, 409, "conflict")
    check_error(api.delete(f"/v1/reminders/{rid}"), 409, "conflict")
    rem = api.get(f"/v1/reminders/{rid}").json()
    assert rem["title"] == "Soon" and rem["counts"]["sent"] == 1


def test_bug_editing_a_sent_reminder_is_409_whatever_the_fields(
    api: httpx.Client, sent_reminder: tuple[int, datetime]
) -> None:
    rid, send_at = sent_reminder
    # send_at more than the 1 s of leeway in the past (the validation's tolerance)
    time.sleep(max(0.0, (send_at + timedelta(seconds=1.5) - datetime.now(UTC)).total_seconds()))
    check_error(api.patch(f"/v1/reminders/{rid}", json={"title": "x"}), 409)


# --------------------------------------------------------------------------- rules, simulate


def test_rules_check_and_simulate(api: httpx.Client) -> None:
    rules = api.get("/v1/rules").json()
    assert rules["timezone"] == "Europe/London"
    assert [r["name"] for r in rules["rules"]] == ["invoice-reminders", "invoice-viewed"]
    assert rules["rules"][0]["steps"] == ["due-soon", "overdue"]

    ok = api.post("/v1/rules:check", json={"rules": RULES}).json()
    assert ok == {"ok": True, "rules": 2, "errors": []}
    bad = api.post("/v1/rules:check", json={"rules": RULES.replace("3d", "3 days")})
    assert bad.status_code == 200
    assert bad.json()["ok"] is False
    [err] = bad.json()["errors"]
    assert err["line"] == 8 and "rules[0]" in err["field"]

    timeline = (
        '{"at": "2026-03-01T09:00:00Z", "recipient": {"id": "c1", "email": "c1@x.test"}}\n'
        '{"at": "2026-03-01T09:00:00Z", "subject": {"kind": "invoice", "key": "S-1", '
        '"attributes": {"status": "sent", "due_at": "2026-03-10T09:00:00Z"}, '
        '"recipients": {"customer": "c1"}}}\n'
        '{"at": "2026-03-02T09:00:00Z", "event": {"id": "e1", "name": "invoice.viewed", '
        '"subject": "invoice/NOPE"}}\n'
    )
    r = api.post("/v1/simulate", json={"rules": RULES, "timeline": timeline})
    assert r.status_code == 200, r.text
    out = r.json()
    assert [(x["step"], x["outcome"], x["at"]) for x in out["rows"]] == [
        ("due-soon", "sent", "2026-03-07T09:00:00Z"),
        ("overdue", "sent", "2026-03-11T09:00:00Z"),
    ]
    assert len(out["warnings"]) == 1 and "NOPE" in out["warnings"][0]


# --------------------------------------------------------------------------- last


def test_a_key_revoked_while_in_use_is_refused_within_seconds(
    live: Live, key_revoked_in_use: dict[str, str]
) -> None:
    # good keys are cached for 5 s (duly.api.keys.KeyStore.CACHE_SECONDS); this test runs last
    wait_for(
        lambda: httpx.get(f"{live.url}/v1/rules", headers=key_revoked_in_use).status_code == 401,
        "the revoked key to be refused",
        timeout=8,
    )
