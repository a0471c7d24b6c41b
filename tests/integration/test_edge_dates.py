"""A subject whose date sits at the edge of the calendar is that subject's bad data: in a
batch the other subjects are planned, the API answers 200, and the problem is recorded
against the subject (before, an OverflowError in the planner failed the whole call)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from duly.api.keys import KeyStore
from duly.core.model import Recipient
from duly.engine.runtime import Runtime
from runtimes import runtime_from  # tests/runtimes.py

RULES = """
timezone: UTC
rules:
  - name: chase
    subject: job
    to: [owner]
    template: plain
    steps:
      - name: daily
        at: "due_at"
        repeat: {every: 1d}
"""


@pytest.fixture
def rt(db_url: str, tmp_path: Path) -> Iterator[Runtime]:
    runtime = runtime_from(RULES, db_url, tmp_path)
    runtime.engine.put_recipient(Recipient("r1", name="Ann", email="ann@example.test"))
    yield runtime
    runtime.db.dispose()


def test_a_date_at_the_end_of_the_calendar_fails_only_its_subject(rt: Runtime) -> None:
    from fastapi.testclient import TestClient

    from duly.app import create_app

    token = KeyStore(rt.db).create("test", datetime.now(UTC))[0]
    soon = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    items = [
        {"kind": "job", "key": "edge", "attributes": {"due_at": "9999-12-31"},
         "recipients": {"owner": "r1"}},
        {"kind": "job", "key": "fine", "attributes": {"due_at": soon},
         "recipients": {"owner": "r1"}},
    ]  # fmt: skip
    with TestClient(create_app(rt, ui=False)) as c:
        h = {"Authorization": f"Bearer {token}"}
        r = c.post("/v1/subjects:batch", json={"subjects": items}, headers=h)
        assert r.status_code == 200, r.text
        single = c.put(
            "/v1/subjects/job/edge2",
            json={"attributes": {"due_at": "9999-12-31T23:00:00Z"}, "recipients": {"owner": "r1"}},
            headers=h,
        )
        assert single.status_code == 200, single.text
        fine = c.get("/v1/subjects/job/fine", headers=h).json()
        edge = c.get("/v1/subjects/job/edge", headers=h).json()
    assert [d["state"] for d in fine["plan"]].count("pending") >= 1
    assert all(d["state"] != "pending" for d in edge["plan"])
    assert r.json()["ok"] == 2
    assert any("due_at" in str(e) for e in edge["errors"]), edge
    assert any("due_at" in p for p in single.json()["problems"])
