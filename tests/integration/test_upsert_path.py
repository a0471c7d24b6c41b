"""The single-upsert path's shortcuts keep the contract: a key vouched for moments ago is
checked on the event loop (and a revoked one is refused), the PUT's plan is read in the
upsert's own transaction, and the store's prebuilt statements answer as the general ones."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from duly.api.keys import KeyStore
from duly.core.model import Recipient
from duly.engine.runtime import Runtime
from duly.engine.service import SubjectInput
from runtimes import runtime_from  # tests/runtimes.py

RULES = """
timezone: UTC
rules:
  - name: remind
    subject: job
    if: "status == 'open'"
    to: [owner]
    template: plain
    steps:
      - name: first
        at: "due_at"
      - name: second
        at: "due_at + 1h"
"""


@pytest.fixture
def rt(db_url: str, tmp_path: Path) -> Iterator[Runtime]:
    runtime = runtime_from(RULES, db_url, tmp_path)
    runtime.engine.put_recipient(Recipient("r1", name="Ann", email="ann@example.test"))
    yield runtime
    runtime.db.dispose()


def client(rt: Runtime) -> tuple[Any, str]:
    from fastapi.testclient import TestClient

    from duly.app import create_app

    app = create_app(rt, ui=False)
    token = KeyStore(rt.db).create("test", datetime.now(UTC))[0]
    return TestClient(app), token


def body(due: datetime, status: str = "open") -> dict[str, Any]:
    return {
        "attributes": {"status": status, "due_at": due.isoformat()},
        "recipients": {"owner": "r1"},
    }


def test_a_key_revoked_in_this_process_is_refused_at_once_though_cached(rt: Runtime) -> None:
    c, token = client(rt)
    h = {"Authorization": f"Bearer {token}"}
    assert c.get("/v1/rules", headers=h).status_code == 200
    keys: KeyStore = c.app.state.keys  # type: ignore[attr-defined]
    assert keys.cached(token) is not None  # the next request is answered from the cache
    assert keys.revoke(token[:12], datetime.now(UTC)) is not None
    assert keys.cached(token) is None
    r = c.get("/v1/rules", headers=h)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"


def test_a_key_revoked_elsewhere_is_refused_once_the_cache_lapses(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    c, token = client(rt)
    h = {"Authorization": f"Bearer {token}"}
    assert c.get("/v1/rules", headers=h).status_code == 200
    KeyStore(rt.db).revoke(token[:12], datetime.now(UTC))  # another process's KeyStore
    assert c.get("/v1/rules", headers=h).status_code == 200  # cached: within CACHE_SECONDS
    monkeypatch.setattr(KeyStore, "CACHE_SECONDS", 0.0)
    keys: KeyStore = c.app.state.keys  # type: ignore[attr-defined]
    assert keys.cached(token) is None
    assert c.get("/v1/rules", headers=h).status_code == 401


def test_only_a_key_verified_moments_ago_is_cached(rt: Runtime) -> None:
    keys = KeyStore(rt.db)
    token = keys.create("k", datetime.now(UTC))[0]
    assert keys.cached(token) is None  # never verified here: ask verify()
    assert keys.cached("not-a-key") is None
    assert keys.cached(token + "x") is None
    info = keys.verify(token, datetime.now(UTC))
    assert info is not None and keys.cached(token) == info
    c, _ = client(rt)
    for header in ("Basic abc", "Bearer", f"bearer {token}x", ""):
        assert c.get("/v1/rules", headers={"Authorization": header}).status_code == 401


def test_the_put_answers_the_plan_it_stored_as_get_shows_it(rt: Runtime) -> None:
    c, token = client(rt)
    h = {"Authorization": f"Bearer {token}"}
    due = datetime.now(UTC) + timedelta(days=3)
    r = c.put("/v1/subjects/job/J-1", json=body(due), headers=h)
    assert r.status_code == 200, r.text
    put = r.json()
    get = c.get("/v1/subjects/job/J-1", headers=h).json()
    assert put["revision"] == 1 and len(put["plan"]) == 2
    for k in ("kind", "key", "revision", "attributes", "recipients", "plan", "acknowledged"):
        assert put[k] == get[k], k
    # closed: the plan is cancelled (history), the answer has none pending
    r = c.put("/v1/subjects/job/J-1", json=body(due, "closed"), headers=h)
    assert r.status_code == 200 and r.json()["revision"] == 2 and r.json()["plan"] == []
    # the same refusals as before: the engine's checks, FastAPI's body validation
    bad = c.put("/v1/subjects/job/J-2", json={"attributes": [], "recipients": {}}, headers=h)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid"


def test_the_answer_plan_is_what_deliveries_of_subject_reads(rt: Runtime) -> None:
    from duly.store.plan import ANSWER_COLS

    eng = rt.engine
    due = datetime.now(UTC) + timedelta(days=3)
    res, rows = eng.upsert_subject_for_answer(
        SubjectInput("job", "J-9", body(due)["attributes"], {"owner": "r1"})
    )
    assert res.created == 2 and res.subject is not None and res.subject.revision == 1
    with eng.db.connect() as conn:
        same = eng.store.deliveries_of_subject(conn, "job/J-9", states=("pending", "sending"))
        assert eng.store.plan_of_subject(conn, "job/J-9") == same
        assert [{c: r[c] for c in ANSWER_COLS} for r in same] == rows
        assert eng.store.plan_of_subject(conn, "job/none") == []


def test_a_batch_still_refuses_a_bad_item_alone(rt: Runtime) -> None:
    c, token = client(rt)
    due = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    items = [
        {"kind": "job", "key": "B-1", "attributes": {"status": "open", "due_at": due},
         "recipients": {"owner": "r1"}},
        {"kind": "job", "key": "B-2", "attributes": {"x": "\x00"}, "recipients": {}},
    ]  # fmt: skip
    r = c.post("/v1/subjects:batch", json={"subjects": items},
               headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["ok"], out["failed"]) == (1, 1)
    assert out["results"][0]["planned"] == 2
    assert out["results"][1]["error"]["field"] == "attributes.x"
