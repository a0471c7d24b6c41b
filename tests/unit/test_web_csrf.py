"""duly.web.csrf.CsrfMiddleware on a bare ASGI app: the rules the web tests rely on, and the
token format asgi-csrf used (so cookies issued before the switch stay valid)."""

from __future__ import annotations

from typing import Any

import pytest
from itsdangerous.url_safe import URLSafeSerializer
from starlette.testclient import TestClient
from starlette.types import Receive, Scope, Send

from duly.web.csrf import CsrfMiddleware

SECRET = "s3cret"


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with the form token (GET) or the body it was given (anything else)."""
    body = b""
    if scope["method"] == "GET":
        body = scope["csrftoken"]().encode()
    else:
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def _failed(scope: Scope, send: Send, reason: str) -> None:
    await send({"type": "http.response.start", "status": 403, "headers": []})
    await send({"type": "http.response.body", "body": reason.encode()})


@pytest.fixture
def client() -> TestClient:
    app = CsrfMiddleware(
        _app, signing_secret=SECRET, cookie_name="c", send_failed=_failed,
        always_protect={"/login"},
    )  # fmt: skip
    return TestClient(app)


def _token(client: TestClient) -> str:
    r = client.get("/")
    assert r.headers["vary"] == "Cookie"
    assert r.cookies["c"] == r.text
    return r.text


def test_a_form_with_the_token_passes_and_its_body_reaches_the_app(client: TestClient) -> None:
    token = _token(client)
    r = client.post("/x", data={"csrftoken": token, "a": "1"})
    assert r.status_code == 200 and r.text == f"csrftoken={token}&a=1"
    assert "set-cookie" not in r.headers  # the cookie was valid: not set again


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        pytest.param({"data": {"csrftoken": "forged"}}, 403, id="forged-field"),
        pytest.param({"data": {"a": "1"}}, 403, id="no-field"),
        pytest.param(
            {"content": b"{}", "headers": {"content-type": "application/json"}},
            403,
            id="other-content-type",
        ),  # fmt: skip
        pytest.param({"headers": {"authorization": "Bearer k"}}, 200, id="bearer"),
    ],
)
def test_with_the_cookie_a_post_needs_the_token(
    client: TestClient, kwargs: dict[str, Any], status: int
) -> None:
    _token(client)
    assert client.post("/x", **kwargs).status_code == status


def test_the_header_is_enough(client: TestClient) -> None:
    token = _token(client)
    r = client.post("/x", content=b"{}", headers={"x-csrftoken": token})
    assert r.status_code == 200


def test_without_any_cookie_only_always_protect_paths_are_checked(client: TestClient) -> None:
    assert client.post("/x", data={"a": "1"}).status_code == 200
    assert client.post("/login", data={"a": "1"}).status_code == 403


def test_multipart_needs_the_token_before_any_file(client: TestClient) -> None:
    token = _token(client)
    ok = client.post("/x", data={"csrftoken": token}, files={"f": ("f.txt", b"data")})
    assert ok.status_code == 200 and b"data" in ok.content  # the whole body is replayed
    boundary = "b0undary"
    late = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="f"; filename="f.txt"\r\n\r\n'
        f'data\r\n--{boundary}\r\nContent-Disposition: form-data; name="csrftoken"\r\n\r\n'
        f"{token}\r\n--{boundary}--\r\n"
    ).encode()
    r = client.post(
        "/x", content=late, headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    assert r.status_code == 403 and r.text == "file part before the token"


def test_a_cookie_in_asgi_csrf_format_stays_valid(client: TestClient) -> None:
    token = URLSafeSerializer(SECRET).dumps("abcdefghijklmnop", "csrftoken")
    client.cookies.set("c", token)
    r = client.get("/")
    assert r.text == token and "set-cookie" not in r.headers
    assert client.post("/x", data={"csrftoken": token}).status_code == 200


def test_a_cookie_with_a_bad_signature_is_replaced(client: TestClient) -> None:
    client.cookies.set("c", "forged.value")
    r = client.get("/")
    assert r.text != "forged.value" and r.cookies["c"] == r.text
    assert client.post("/x", data={"csrftoken": "forged.value"}).status_code == 403
