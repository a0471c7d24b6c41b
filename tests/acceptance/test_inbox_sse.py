"""The inbox over real HTTP: a `duly serve` process (tests/live.py) with a rule using
``channels: [inbox]``; a Server-Sent Events stream gets a one-off reminder's item within a
second of the delivery being sent, and the list/read/count endpoints agree."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from live import Live, live_server  # tests/ is on sys.path (conftest.py)

RULES = """\
rules:
  - name: notice
    subject: notice
    on: notice.posted
    to: [reader]
    channels: [inbox]
"""
TEMPLATE = "Subject: notice {{ subject.key }}\nPosted\n"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("inbox")
    (tmp / "templates").mkdir()
    (tmp / "templates" / "notice.inbox.txt").write_text(TEMPLATE)
    (tmp / "duly.yaml").write_text(RULES)
    with live_server(tmp, rules=tmp / "duly.yaml") as server:
        yield server


@pytest.fixture(scope="module")
def api(live: Live) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {live.key}"}
    with httpx.Client(base_url=live.url, headers=headers, timeout=10) as c:
        for rid in ("ann", "bob"):
            assert c.put(f"/v1/recipients/{rid}", json={"name": rid}).status_code in (200, 201)
        yield c


def _read_events(
    live: Live, rid: str, out: list[tuple[float, dict[str, Any]]], ready: threading.Event
) -> None:
    headers = {"Authorization": f"Bearer {live.key}"}
    with (
        httpx.Client(base_url=live.url, headers=headers, timeout=httpx.Timeout(10, read=20)) as c,
        c.stream("GET", f"/v1/recipients/{rid}/inbox/stream") as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in r.iter_lines():
            if line.startswith(": connected"):
                ready.set()
            elif line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "message":
                out.append((time.time(), json.loads(line[5:])))
                return


def test_the_stream_gets_a_sent_inbox_item_within_a_second(live: Live, api: httpx.Client) -> None:
    got: list[tuple[float, dict[str, Any]]] = []
    ready = threading.Event()
    reader = threading.Thread(target=_read_events, args=(live, "ann", got, ready), daemon=True)
    reader.start()
    assert ready.wait(10), "the stream did not open"
    send_at = datetime.now(UTC) + timedelta(seconds=1)
    body = {
        "title": "Standup",
        "message": "In five minutes",
        "recipients": ["ann"],
        "send_at": send_at.isoformat(),
        "channels": ["inbox"],
    }
    assert api.post("/v1/reminders", json=body).status_code == 201
    reader.join(15)
    assert got, "no event arrived"
    received, item = got[0]
    assert item["title"] == "Standup" and item["text"] == "In five minutes"
    assert item["read_at"] is None and item["rule"] == "@reminder"
    sent = datetime.fromisoformat(item["sent_at"]).timestamp()
    assert received - sent < 1.0, f"the event came {received - sent:.3f}s after the send"

    page = api.get("/v1/recipients/ann/inbox").json()
    assert page["unread"] == 1 and [i["id"] for i in page["items"]] == [item["id"]]
    assert api.get("/v1/recipients/ann/inbox/count").json() == {"unread": 1}
    assert api.post(f"/v1/recipients/bob/inbox/{item['id']}/read").status_code == 404
    read = api.post(f"/v1/recipients/ann/inbox/{item['id']}/read")
    assert read.status_code == 200 and read.json()["read_at"] is not None
    assert api.get("/v1/recipients/ann/inbox?unread=true").json()["items"] == []
    assert api.get("/v1/recipients/ann/inbox/count").json() == {"unread": 0}


def test_the_stream_resumes_from_last_event_id_and_needs_a_key(live: Live) -> None:
    assert httpx.get(f"{live.url}/v1/recipients/ann/inbox/stream").status_code == 401
    headers = {"Authorization": f"Bearer {live.key}", "Last-Event-ID": "0"}
    with (
        httpx.Client(base_url=live.url, headers=headers, timeout=10) as c,
        c.stream("GET", "/v1/recipients/ann/inbox/stream") as r,
    ):
        for line in r.iter_lines():
            if line.startswith("data:"):
                assert json.loads(line[5:])["title"] == "Standup"
                break
