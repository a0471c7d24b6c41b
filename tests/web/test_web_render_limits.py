"""Bounded previews and saves (issue 11): a viewer's preview of a runaway template, and a
save through the API whose runaway branch only a real subject enters, answer 4xx naming the
limit within a bounded time; many concurrent previews answer 503 with Retry-After instead
of piling up, and never a 500; the server's own memory does not grow with a memory bomb."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from duly.api.keys import KeyStore
from duly.core.model import Recipient
from duly.engine.service import SubjectInput
from webui import VIEWER, Web, make_web  # tests/webui.py

RULES = """
timezone: UTC
render: {timeout: 1s, max_output: 1MB, max_memory: 128MB, workers: 2}
rules:
  - name: payment-receipt
    subject: invoice
    on: {change: status, to: paid}
    category: transactional
    to: [customer]
"""
GOOD = "Subject: Receipt {{ subject.key }}\nThanks {{ recipient.name }}.\n"
LOOP = (
    "Subject: Receipt {{ subject.key }}\n{% if attributes.big %}"
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    "{% endif %}ok\n"
)
BOMB = (
    "Subject: R\n{% set s = 'y' * 100000 %}"
    "{{ range(100000)|map('string')|map('replace', '', s)|list|length }}\n"
)


@pytest.fixture
def web(tmp_path: Path):  # noqa: ANN201
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "payment-receipt.email.txt").write_text(GOOD)
    (tmp_path / "duly.yaml").write_text(RULES)
    w = make_web(tmp_path, rules=tmp_path / "duly.yaml")
    w.engine.put_recipient(Recipient("c1", name="Alice", email="alice@example.test"))
    w.engine.upsert_subjects(
        [SubjectInput("invoice", "INV-9", {"status": "sent", "big": True}, {"customer": "c1"})]
    )
    try:
        yield w
    finally:
        w.close()


def api_headers(web: Web) -> dict[str, str]:
    token, _ = KeyStore(web.rt.db).create("tests", datetime.now(UTC))
    return {"Authorization": f"Bearer {token}"}


def test_a_viewers_preview_of_a_runaway_template_answers_the_limit_in_bounded_time(
    web: Web,
) -> None:
    web.login(VIEWER)
    edit = "/templates/payment-receipt"
    data = {"part:email.txt": LOOP, "channel": "email", "subject": "invoice/INV-9"}
    t0 = time.monotonic()
    r = web.post(f"{edit}/preview", data, token_from=edit)
    took = time.monotonic() - t0
    assert r.status_code == 200
    assert "render took longer than 1 s (render.timeout)" in r.text
    assert took < 10, took


def test_api_preview_and_save_answer_422_naming_the_limit_and_the_subject(web: Web) -> None:
    h = api_headers(web)
    c = web.client
    t0 = time.monotonic()
    r = c.post(
        "/v1/templates/payment-receipt/preview",
        json={"channel": "email", "subject": "invoice/INV-9", "body": LOOP},
        headers=h,
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "render_limit"
    assert r.json()["template_error"]["limit"] == "render.timeout"
    assert "render.timeout" in r.json()["error"]["message"]
    # sample data does not enter the {% if %}: the newest real subject does
    r = c.put("/v1/templates/payment-receipt", json={"channel": "email", "body": LOOP}, headers=h)
    assert r.status_code == 422, r.text
    err = r.json()
    assert err["error"]["code"] == "render_limit"
    assert err["template_error"]["limit"] == "render.timeout"
    assert err["template_error"]["subject"] == "invoice/INV-9"
    assert "invoice/INV-9" in err["error"]["message"]
    assert c.get("/v1/templates/payment-receipt", headers=h).json()["latest_version"] is None
    assert time.monotonic() - t0 < 20
    # a growth the sandbox sees coming is refused at once, naming the line
    r = c.post(
        "/v1/templates/payment-receipt/preview",
        json={"channel": "email", "body": "Subject: x\n{{ ('x' * 1000000000)|length }}\n"},
        headers=h,
    )
    assert r.status_code == 422 and r.json()["template_error"]["line"] == 2
    assert "render.max_output" in r.json()["error"]["message"]
    # a template that is fine saves, and says nothing about limits
    r = c.put("/v1/templates/payment-receipt", json={"channel": "email", "body": GOOD}, headers=h)
    assert r.status_code == 200 and r.json()["warnings"] == [], r.text


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_a_memory_bomb_preview_fails_in_its_render_process_not_the_server(web: Web) -> None:
    h = api_headers(web)
    before = _rss_kb()
    r = web.client.post(
        "/v1/templates/payment-receipt/preview",
        json={"channel": "email", "body": BOMB},
        headers=h,
    )
    assert r.status_code == 422, r.text
    assert r.json()["template_error"]["limit"] == "render.max_memory"
    grew_mb = (_rss_kb() - before) / 1024
    assert grew_mb < 50, grew_mb  # the bomb would take 10 GB; it ran elsewhere


def test_many_concurrent_previews_are_bounded_and_answer_503_with_retry_after(
    web: Web,
) -> None:
    h = api_headers(web)
    statuses: list[int] = []
    retry: list[str] = []
    lock = threading.Lock()

    def preview() -> None:
        r = web.client.post(
            "/v1/templates/payment-receipt/preview",
            json={"channel": "email", "subject": "invoice/INV-9", "body": LOOP},
            headers=h,
        )
        with lock:
            statuses.append(r.status_code)
            if r.status_code == 503:
                retry.append(r.headers.get("Retry-After", ""))

    threads = [threading.Thread(target=preview) for _ in range(20)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(0.5)
    h0 = time.monotonic()
    assert web.client.get("/healthz").status_code == 200
    healthz = time.monotonic() - h0
    for t in threads:
        t.join(60)
    took = time.monotonic() - t0
    assert sorted(set(statuses)) == [422, 503], statuses
    assert retry and all(v.isdigit() and int(v) >= 1 for v in retry)
    assert healthz < 2, healthz
    # 2 workers, previews may hold 1: the previews that got a worker ran one after another
    assert took < 30, took
