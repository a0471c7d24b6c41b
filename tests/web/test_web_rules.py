"""Rules pages: the loaded rule file with each rule's next occurrences, and the simulation."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

import duly.demo
from duly.core.model import Recipient
from duly.core.rules import timemath
from duly.engine import simulation as simulate
from duly.engine.service import SubjectInput
from duly.engine.simulation import Limits, ServerSimulations
from duly.web.views.rules import example_timeline
from webui import HOSTILE, VIEWER, Web, make_web  # tests/webui.py

RULES = f"""# rules for the web tests {HOSTILE}
timezone: Europe/London
groups:
  managers: [m1]
rules:
  - name: jobs-digest
    cron: "0 8 * * mon-fri"
    timezone: America/New_York
    to: [group:managers]
    template: digest
  - name: job-reminders
    subject: job
    if: "status == 'open'"
    to: [owner]
    steps:
      - {{name: due, at: "due_at", template: note}}
      - {{name: late, at: "due_at + 2d", template: note}}
"""


@pytest.fixture
def sched(tmp_path: Path) -> Iterator[Web]:
    """The UI over a rule file with a schedule rule and a date rule."""
    folder = tmp_path / "rules"
    (folder / "templates").mkdir(parents=True)
    (folder / "templates" / "digest.email.txt").write_text("Subject: digest\nx\n")
    (folder / "templates" / "note.email.txt").write_text("Subject: {{ subject.key }} is due\n")
    (folder / "duly.yaml").write_text(RULES)
    w = make_web(tmp_path, rules=folder / "duly.yaml")
    try:
        yield w
    finally:
        w.close()


def _row(page: str, rule: str) -> str:
    m = re.search(rf'<tr id="rule-{re.escape(rule)}">(.*?)</tr>', page, re.S)
    assert m, f"no row for {rule}"
    return m.group(1)


def _times(fragment: str) -> list[str]:
    return re.findall(r'<time datetime="([^"]+)"', fragment)


def _outcomes(page: str) -> list[tuple[str, ...]]:
    """(rule, step, subject, recipient, channel, outcome) of each row of the outcomes table."""
    body = page.split('<table class="outcomes">', 1)[1].split("</table>", 1)[0]
    out = []
    for tr in re.findall(r"<tr>(.*?)</tr>", body.split("<tbody>", 1)[1], re.S):
        cells = [re.sub(r"<[^>]+>", " ", c) for c in re.findall(r"<td>(.*?)</td>", tr, re.S)]
        cells = [html.unescape(" ".join(c.split())) for c in cells]
        out.append((cells[1], cells[2], cells[3], cells[4], cells[5], cells[6].split()[0]))
    return out


def _example(web: Web) -> str:
    page = web.get("/rules/simulate?example=1").text
    m = re.search(r'name="timeline"[^>]*>\n(.*?)</textarea>', page, re.S)
    assert m
    return html.unescape(m.group(1))


def test_rules_page_lists_the_demo_rules_and_their_file(web: Web) -> None:
    web.login()
    page = web.get("/rules").text
    for name in ("invoice-reminders", "payment-receipt", "appointment-reminders"):
        assert f'<tr id="rule-{name}">' in page
    row = _row(page, "invoice-reminders")
    demo = (Path(duly.demo.__file__).parent / "duly.yaml").read_text().splitlines()
    line = demo.index("  - name: invoice-reminders") + 1
    assert f'href="#L{line}"' in row  # the rule's line in the file
    assert "due_at - 3d" in row and 'href="/templates/invoice-due-soon"' in row
    assert "change of status to &#39;paid&#39;" in _row(page, "payment-receipt")
    assert (
        f'<span class="line" id="L{line}"><span class="ln" aria-hidden="true">{line}</span>' in page
    )
    assert "  - name: invoice-reminders</span>" in page


def test_date_rules_show_their_next_pending_deliveries(web: Web) -> None:
    now = web.engine.clock.now()
    web.engine.put_recipient(Recipient(id="c1", name="C", email="c@example.com"))
    for i in range(7):  # 14 pending rows, only the next 5 shown
        due = (now + timedelta(days=10 + i)).strftime("%Y-%m-%dT%H:%M:%SZ")
        web.engine.upsert_subject(
            SubjectInput(
                "invoice",
                f"INV-{i}",
                {"status": "sent", "amount": 1, "currency": "EUR", "due_at": due},
                {"customer": "c1"},
            )
        )
    web.login()
    row = _row(web.get("/rules").text, "invoice-reminders")
    times = _times(row)
    assert len(times) == 5 and times == sorted(times)
    first = (now + timedelta(days=7)).strftime("%Y-%m-%dT%H:%M")  # INV-0's due-soon
    assert times[0].startswith(first)
    assert "invoice/INV-0 · due-soon · c1 · email" in row
    assert 'href="/upcoming?rule=invoice-reminders"' in row
    assert _times(_row(web.get("/rules").text, "appointment-reminders")) == []


def test_schedule_rules_show_their_next_five_fire_times_in_their_zone(sched: Web) -> None:
    sched.login()
    page = sched.get("/rules").text
    row = _row(page, "jobs-digest")
    tz = timemath.zone("America/New_York")
    t = timemath.cron_next("0 8 * * mon-fri", tz, sched.engine.clock.now(), inclusive=True)
    want = []
    for _ in range(5):
        want.append(t.strftime("%Y-%m-%dT%H:%M:%SZ"))
        t = timemath.cron_next("0 8 * * mon-fri", tz, t)
    assert _times(row) == want
    for w in want:  # 08:00 in New York, on weekdays
        local = timemath._utc(__import__("datetime").datetime.fromisoformat(w)).astimezone(tz)
        assert local.hour == 8 and local.weekday() < 5
    assert "cron read in America/New_York" in row
    assert "schedule 0 8 * * mon-fri" in row
    # the file's text is shown escaped
    assert HOSTILE not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_simulate_the_example_gives_the_expected_outcomes(web: Web) -> None:
    web.login()
    timeline = _example(web)
    assert timeline == example_timeline(web.engine.clock.now())
    r = web.post(
        "/rules/simulate", {"timeline": timeline, "until": ""}, token_from="/rules/simulate"
    )
    assert r.status_code == 200, r.text[:2000]
    rows = _outcomes(r.text)
    assert rows == [
        ("invoice-reminders", "due-soon", "invoice/INV-2", "c1", "email", "Sent"),
        ("appointment-reminders", "day-before", "appointment/APT-1", "c1", "email", "Sent"),
        ("appointment-reminders", "two-hours", "appointment/APT-1", "c1", "email", "Sent"),
        ("invoice-reminders", "overdue", "invoice/INV-2", "c1", "email", "Sent"),
        ("invoice-reminders", "due-soon", "invoice/INV-1", "c1", "email", "Sent"),
        ("invoice-reminders", "overdue", "invoice/INV-1", "c1", "email", "Cancelled"),
        ("payment-receipt", "—", "invoice/INV-1", "c1", "email", "Sent"),
    ]
    assert "Invoice INV-1 is due on" in r.text  # messages rendered with the templates
    assert "condition_false" in r.text
    assert "7 outcomes until" in r.text


def test_simulate_uses_the_templates_saved_in_the_database(web: Web) -> None:
    web.login()
    now = web.engine.clock.now()
    web.rt.templates.save(
        "payment-receipt",
        [("email", "txt", "Subject: Thanks for paying {{ subject.key }}\nx\n")],
        author="t",
        now=now,
    )
    r = web.post("/rules/simulate", {"timeline": _example(web)}, token_from="/rules/simulate")
    assert "Thanks for paying INV-1" in r.text


def test_a_malformed_timeline_line_is_reported_with_its_number_and_the_input_kept(
    web: Web,
) -> None:
    web.login()
    lines = _example(web).splitlines()
    lines[2] = '{"at": "2026-03-01T09:05:00Z", "subject": {oops'
    bad = "\n".join(lines) + "\n"
    r = web.post("/rules/simulate", {"timeline": bad}, token_from="/rules/simulate")
    assert r.status_code == 400
    assert "Not run." in r.text
    assert "Timeline: line 3: not valid JSON" in r.text
    assert '<span class="ln">3</span> {&#34;at&#34;: &#34;2026-03-01T09:05:00Z&#34;' in r.text
    m = re.search(r'name="timeline"[^>]*>\n(.*?)</textarea>', r.text, re.S)
    assert m and html.unescape(m.group(1)) == bad
    assert '<table class="outcomes">' not in r.text
    # a line in the wrong order, a missing "at"
    r = web.post(
        "/rules/simulate",
        {"timeline": '{"at": "2026-03-02T00:00:00Z", "delete": "a/b"}\n{"delete": "a/b"}\n'},
        token_from="/rules/simulate",
    )
    assert r.status_code == 400 and "line 2: at: missing" in r.text
    r = web.post("/rules/simulate", {"timeline": ""}, token_from="/rules/simulate")
    assert r.status_code == 400 and "paste a timeline" in r.text


def test_simulate_reports_bad_rules_and_limits_the_horizon(web: Web) -> None:
    web.login()
    timeline = _example(web)
    rules = "timezone: Europe/London\nrules:\n  - name: x\n    subject: invoice\n    stepz: []\n"
    r = web.post(
        "/rules/simulate", {"timeline": timeline, "rules": rules}, token_from="/rules/simulate"
    )
    assert r.status_code == 400
    assert "the rules are not valid" in r.text
    assert re.search(r"<li>line 5: [^<]*stepz", r.text), r.text[-3000:]
    m = re.search(r'name="rules"[^>]*>\n(.*?)</textarea>', r.text, re.S)
    assert m and html.unescape(m.group(1)) == rules
    r = web.post(
        "/rules/simulate",
        {"timeline": timeline, "until": "2099-01-01T00:00"},
        token_from="/rules/simulate",
    )
    assert r.status_code == 400 and "simulate at most 92 days" in r.text
    r = web.post(
        "/rules/simulate", {"timeline": timeline, "until": "soon"}, token_from="/rules/simulate"
    )
    assert r.status_code == 400 and "Until:" in r.text


def test_a_line_the_api_would_refuse_is_skipped_with_a_warning(web: Web) -> None:
    web.login()
    timeline = _example(web)
    last = json.loads(timeline.splitlines()[-1])["at"]
    event = {"id": "e1", "name": "x", "subject": "invoice/NOPE"}
    extra = timeline + json.dumps({"at": last, "event": event}) + "\n"
    r = web.post("/rules/simulate", {"timeline": extra}, token_from="/rules/simulate")
    assert r.status_code == 200
    assert "Lines skipped" in r.text and "timeline:6:" in r.text
    assert len(_outcomes(r.text)) == 7


def test_simulate_runs_an_uploaded_file(web: Web) -> None:
    web.login()
    timeline = _example(web)
    token = web.token("/rules/simulate")
    r = web.client.post(
        "/rules/simulate",
        data={"csrftoken": token, "timeline": "", "until": ""},
        files={"file": ("timeline.jsonl", timeline.encode(), "application/x-ndjson")},
    )
    assert r.status_code == 200, r.text[:2000]
    assert len(_outcomes(r.text)) == 7
    r = web.client.post(
        "/rules/simulate",
        data={"csrftoken": token},
        files={"file": ("t.jsonl", b"\xff\xfe\x00bad", "application/octet-stream")},
    )
    assert r.status_code == 400 and "not UTF-8" in r.text


def test_an_upload_without_the_token_first_is_refused(web: Web) -> None:
    """duly.web.csrf reads a multipart body only up to the token: no token, or a file part
    before it, is refused."""
    web.login()
    token = web.token("/rules/simulate")
    r = web.client.post(
        "/rules/simulate", files={"file": ("t.jsonl", b"{}", "application/x-ndjson")}
    )
    assert r.status_code == 403
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n'
        "Content-Type: application/x-ndjson\r\n\r\n{}\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="csrftoken"\r\n\r\n{token}\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    r = web.client.post(
        "/rules/simulate",
        content=body,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 403


def test_a_viewer_may_run_a_simulation(web: Web) -> None:
    web.login(VIEWER)
    r = web.post("/rules/simulate", {"timeline": _example(web)}, token_from="/rules/simulate")
    assert r.status_code == 200 and len(_outcomes(r.text)) == 7


def test_simulate_without_the_csrf_token_is_refused(web: Web) -> None:
    web.login()
    web.get("/rules/simulate")
    r = web.client.post("/rules/simulate", data={"timeline": _example(web)})
    assert r.status_code == 403


def test_rules_pages_need_sign_in(web: Web) -> None:
    for url in ("/rules", "/rules/simulate"):
        r = web.get(url, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")


@pytest.mark.slow
def test_rules_pages_on_postgresql(tmp_path: Path, pg_db_url: str) -> None:
    web = make_web(tmp_path, database=pg_db_url)
    try:
        web.engine.put_recipient(Recipient(id="c1", name="C", email="c@example.com"))
        due = (web.engine.clock.now() + timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
        web.engine.upsert_subject(
            SubjectInput(
                "invoice",
                "INV-PG",
                {"status": "sent", "amount": 1, "currency": "EUR", "due_at": due},
                {"customer": "c1"},
            )
        )
        web.login()
        row = _row(web.get("/rules").text, "invoice-reminders")
        assert len(_times(row)) == 2 and "invoice/INV-PG" in row
        r = web.post("/rules/simulate", {"timeline": _example(web)}, token_from="/rules/simulate")
        assert r.status_code == 200 and len(_outcomes(r.text)) == 7
    finally:
        web.close()


def test_a_password_written_into_a_url_in_the_rule_file_is_not_shown(tmp_path: Path) -> None:
    folder = tmp_path / "rules"
    (folder / "templates").mkdir(parents=True)
    (folder / "templates" / "digest.email.txt").write_text("Subject: digest\nx\n")
    (folder / "templates" / "note.email.txt").write_text("Subject: {{ subject.key }} is due\n")
    channels = (
        "channels:\n"
        '  email: {type: smtp, url: "smtp://billing:s3cret-pw@mail.example.com:587",'
        ' from: "Billing <b@example.com>"}\n'
    )
    (folder / "duly.yaml").write_text(RULES.replace("groups:\n", channels + "groups:\n", 1))
    w = make_web(tmp_path, rules=folder / "duly.yaml")
    try:
        w.login(VIEWER)
        for url in ("/rules", "/rules/simulate"):
            page = w.get(url).text
            assert "s3cret-pw" not in page, url
        assert "smtp://billing:***@mail.example.com:587" in w.get("/rules").text
    finally:
        w.close()


# --------------------------------------------------------------------------- bounded runs


def _serve_with(monkeypatch: pytest.MonkeyPatch, limits: Limits, n: int = 2) -> None:
    monkeypatch.setattr(simulate, "server", ServerSimulations(limits, n))


def test_a_viewers_simulation_stops_at_the_outcome_and_time_limits(
    web: Web, monkeypatch: pytest.MonkeyPatch
) -> None:
    web.login(VIEWER)
    timeline = _example(web)  # 7 outcomes
    _serve_with(monkeypatch, Limits(span=timedelta(days=92), outcomes=3, wall=60))
    r = web.post("/rules/simulate", {"timeline": timeline}, token_from="/rules/simulate")
    assert r.status_code == 400 and "Not run." in r.text
    assert "more than 3 outcomes" in r.text and "Choose an earlier until" in r.text
    assert '<table class="outcomes">' not in r.text
    _serve_with(monkeypatch, Limits(span=timedelta(days=92), wall=1e-6))
    r = web.post("/rules/simulate", {"timeline": timeline}, token_from="/rules/simulate")
    assert r.status_code == 400 and "took longer than 1e-06 s" in r.text
    _serve_with(monkeypatch, Limits(span=timedelta(days=92), outcomes=7, wall=60))
    r = web.post("/rules/simulate", {"timeline": timeline}, token_from="/rules/simulate")
    assert r.status_code == 200 and len(_outcomes(r.text)) == 7  # exactly the limit runs


def test_a_simulation_is_refused_while_the_server_runs_as_many_as_it_allows(
    web: Web, monkeypatch: pytest.MonkeyPatch
) -> None:
    web.login(VIEWER)
    srv = ServerSimulations(Limits(span=timedelta(days=92), wall=10), 1)
    monkeypatch.setattr(simulate, "server", srv)
    timeline = _example(web)
    assert srv.try_enter()  # one simulation running (by the API, say)
    try:
        r = web.post("/rules/simulate", {"timeline": timeline}, token_from="/rules/simulate")
        assert r.status_code == 429 and r.headers["Retry-After"] == "10"
        assert "Server busy:" in r.text and "try again in 10 s" in r.text
    finally:
        srv.leave()
    r = web.post("/rules/simulate", {"timeline": timeline}, token_from="/rules/simulate")
    assert r.status_code == 200 and len(_outcomes(r.text)) == 7


def test_the_page_holds_only_the_rows_it_shows(web: Web, monkeypatch: pytest.MonkeyPatch) -> None:
    from duly.web.views import rules as view

    monkeypatch.setattr(view, "MAX_ROWS", 3)
    web.login(VIEWER)
    full = web.post("/rules/simulate", {"timeline": _example(web)}, token_from="/rules/simulate")
    monkeypatch.undo()
    monkeypatch.setattr(view, "MAX_ROWS", 1000)
    every = _outcomes(
        web.post("/rules/simulate", {"timeline": _example(web)}, token_from="/rules/simulate").text
    )
    assert full.status_code == 200
    assert _outcomes(full.text) == every[:3]
    assert "Showing the first 3 of 7 rows." in full.text
    assert "sent: <strong>6</strong>" in full.text  # the summary counts every row


def test_rules_nested_thousands_deep_are_refused_on_the_page(web: Web) -> None:
    web.login(VIEWER)
    rules = "rules: " + "[" * 5000 + "]" * 5000 + "\n"
    r = web.post(
        "/rules/simulate",
        {"timeline": _example(web), "rules": rules},
        token_from="/rules/simulate",
    )
    assert r.status_code == 400 and "Not run." in r.text, r.text[:500]
    assert "nested too deeply" in r.text or "the rules are not valid" in r.text
