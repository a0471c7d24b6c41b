"""duly.api.fastput answers ``PUT /v1/subjects/{kind}/{key}`` exactly as FastAPI's route
does: the same requests, sent to two apps over two fresh databases — one with the lean route,
one without — get the same status, content type and body, byte for byte; and the lean route
really answers the plainly valid ones (the others are FastAPI's to refuse)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import duly.api.fastput as fastput
from duly.api.keys import KeyStore
from duly.app import create_app
from duly.core.rules.loader import load_rules
from duly.engine.runtime import build_runtime

RULES = """\
timezone: UTC
channels:
  email: {type: outbox}
rules:
  - name: chase
    subject: invoice
    if: "status == 'sent'"
    to: [customer]
    template: note
    steps:
      - {name: soon, at: "due_at - 3d"}
      - {name: late, at: "due_at + 1d"}
"""

BIG = "x" * 300
FAR = "2031-03-15T12:00:00+00:00"
GOOD = {"attributes": {"status": "sent", "due_at": FAR}, "recipients": {"customer": "c1"}}
# (path, body or raw bytes, headers): what an app sends, good and bad
CASES: list[tuple[str, Any, dict[str, str]]] = [
    ("/v1/subjects/invoice/A-1", GOOD, {}),
    ("/v1/subjects/invoice/A-1", GOOD, {}),  # again: revision 2, nothing moves
    ("/v1/subjects/invoice/A-1", {**GOOD, "attributes": {"status": "paid"}}, {}),  # cancels
    ("/v1/subjects/invoice/A/with/slashes", GOOD, {}),
    ("/v1/subjects/invoice/A-2", {**GOOD, "hold_until": "indefinite"}, {}),
    ("/v1/subjects/invoice/A-3", {**GOOD, "hold_until": "2031-01-01T00:00:00Z"}, {}),
    ("/v1/subjects/invoice/A-4", {"attributes": {"n": 1.5e300, "é": "ü"}}, {}),
    ("/v1/subjects/invoice/A-5", {}, {}),
    ("/v1/subjects/invoice/A-6", {**GOOD, "extra": 1}, {}),  # refused: unknown field
    ("/v1/subjects/invoice/A-7", {"attributes": []}, {}),
    ("/v1/subjects/invoice/A-8", {"hold_until": "tomorrow"}, {}),
    ("/v1/subjects/invoice/A-9", {"hold_until": "2031-01-01T00:00:00"}, {}),  # no offset
    ("/v1/subjects/invoice/A-10", b"{not json", {}),
    ("/v1/subjects/invoice/A-11", b"", {}),
    ("/v1/subjects/invoice/A-12", b"[1, 2]", {}),
    ("/v1/subjects/invoice/A-13", {"attributes": {"x": "a\u0000b"}}, {}),
    ("/v1/subjects/invoice/A-14", b'{"attributes": {"x": NaN}}', {}),
    ("/v1/subjects/invoice/A-15", {"recipients": {"customer": BIG}}, {}),  # the engine refuses
    ("/v1/subjects/invoice/A-16", {"recipients": {"customer": ["c1", "c2"]}}, {}),
    (f"/v1/subjects/invoice/{BIG}", GOOD, {}),  # key too long
    (f"/v1/subjects/{BIG}/k", GOOD, {}),  # kind too long
    ("/v1/subjects/invoice/", GOOD, {}),  # no key
    ("/v1/subjects/invoice/A-17?x=1", GOOD, {}),
    ("/v1/subjects/invoice/A-18", GOOD, {"content-type": "text/plain"}),
    ("/v1/subjects/invoice/A-19", GOOD, {"content-type": "application/json; charset=utf-8"}),
    (
        "/v1/subjects/invoice/A-20",
        {
            "attributes": {
                "deep": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]
            }
        },
        {},
    ),  # fmt: skip
    (
        "/v1/subjects/invoice/A-21",
        {"attributes": {"note": "y" * 2_000_000}},
        {},
    ),  # over the body limit
    ("/v1/subjects/invoice/A-22", GOOD, {"authorization": "Bearer nope"}),
    ("/v1/subjects/invoice/A-23", GOOD, {"authorization": ""}),
]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[TestClient, TestClient]]:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "note.email.txt").write_text("Subject: {{ subject.key }}\nhi\n")
    (tmp_path / "duly.yaml").write_text(RULES)
    rf = load_rules(tmp_path / "duly.yaml")
    clients, runtimes = [], []
    for name, fast in (("fast", True), ("slow", False)):
        rt = build_runtime(rf, f"sqlite:///{tmp_path / name}.db", send_workers=1)
        runtimes.append(rt)
        key, _ = KeyStore(rt.db).create("t", datetime.now(UTC))
        app = create_app(rt)
        if not fast:  # the same app with the lean route taken out of the middleware
            app.user_middleware = [m for m in app.user_middleware if m.cls is not fastput.FastPut]
            app.middleware_stack = None
        c = TestClient(app, raise_server_exceptions=False)
        c.headers["authorization"] = f"Bearer {key}"
        r = c.put("/v1/recipients/c1", json={"email": "c1@example.test"})
        assert r.status_code in (200, 201), r.text
        clients.append(c)
    try:
        yield clients[0], clients[1]
    finally:
        for c in clients:
            c.close()
        for rt in runtimes:
            rt.stop(5)


def test_the_lean_route_answers_as_fastapi_does(
    pair: tuple[TestClient, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, slow = pair
    taken: list[str] = []
    plainly_valid = fastput._plainly_valid

    def spy(kind: str, key: str, body: bytes) -> Any:
        got = plainly_valid(kind, key, body)
        if got is not None:
            taken.append(f"{kind}/{key}")
        return got

    monkeypatch.setattr(fastput, "_plainly_valid", spy)
    statuses = []
    for path, body, headers in CASES:
        answers = []
        for client in (fast, slow):
            hdrs = {"content-type": "application/json", **headers}
            if "authorization" in headers:
                hdrs["authorization"] = headers["authorization"]
            raw = body if isinstance(body, bytes) else __import__("json").dumps(body).encode()
            r = client.put(path, content=raw, headers=hdrs)
            answers.append((r.status_code, r.headers.get("content-type"), r.content))
        assert answers[0] == answers[1], (path, body, answers)
        statuses.append(answers[0][0])
    # good ones and each kind of refusal were both covered
    assert {200, 401, 413, 422} <= set(statuses), statuses
    assert 400 in statuses
    # the lean route answered the valid ones (and only the fast app's: one per valid request)
    assert "invoice/A-1" in taken and "invoice/A/with/slashes" in taken, taken
    assert "invoice/A-6" not in taken and "invoice/A-17" not in taken, taken
    assert len(taken) >= 8, taken
