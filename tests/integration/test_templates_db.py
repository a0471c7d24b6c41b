"""Templates kept in the database on SQLite and PostgreSQL: versions with
their authors, refused saves that store nothing, the database version winning over the file
in the dispatcher's rendering, another process seeing a save within the refresh time, and
the HTTP API against a real `duly serve`."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from duly.core.clock import VirtualClock
from duly.core.model import Recipient
from duly.core.planner import Identity
from duly.core.rules.loader import load_rules_text
from duly.delivery.channels.outbox import OutboxChannel
from duly.delivery.rendering import Renderer
from duly.delivery.templates import CONTEXT_NAMES, TemplateInvalid, TemplateStore
from duly.engine.dispatch import Dispatcher, _Work
from duly.engine.service import Engine, SubjectInput
from duly.store.db import make_engine
from duly.store.store import DeliveryRow
from duly.store.tables import deliveries, templates
from live import live_server

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)

FILE_TXT = "Subject: From the file: {{ subject.key }}\nHello {{ recipient.name }}.\n"
RULES = """
timezone: UTC
rules:
  - name: note
    subject: ticket
    on: {change: status, to: open}
    category: transactional
    to: [owner]
    template: note
"""

DIGEST = """
  - name: digest
    cron: "0 8 * * *"
    to: [id:r1]
    collect:
      open_tickets: {subject: ticket, if: "status == 'open'"}
    template: digest
"""
DIGEST_TXT = (
    "Subject: {{ open_tickets|length }} open\n{% for t in open_tickets %}{{ t.key }} {% endfor %}\n"
)


@pytest.fixture
def tdir(tmp_path: Path) -> Path:
    d = tmp_path / "templates"
    d.mkdir()
    (d / "note.email.txt").write_text(FILE_TXT)
    (d / "digest.email.txt").write_text(DIGEST_TXT)
    return d


@pytest.fixture
def store(db_url: str, tdir: Path):  # noqa: ANN201
    db = make_engine(db_url)
    yield TemplateStore(db, tdir)
    db.dispose()


def count_rows(store: TemplateStore) -> int:
    with store.db.connect() as c:
        return int(c.execute(sa.select(sa.func.count()).select_from(templates)).scalar_one())


# --------------------------------------------------------------------------- versions


def test_versions_increase_with_author_and_history(store: TemplateStore) -> None:
    v1 = "Subject: One {{ subject.key }}\nv1\n"
    s1 = store.save("note", [("email", "txt", v1)], author="alice", now=T0)
    assert (s1.version, s1.changed, s1.warnings) == (1, ["email.txt"], [])
    s2 = store.save(
        "note",
        [("email", "txt", "Subject: Two\nv2\n"), ("email", "html", "<p>{{ subject.key }}</p>")],
        author="bob",
        now=T0 + timedelta(hours=1),
    )
    assert (s2.version, s2.changed) == (2, ["email.html", "email.txt"])
    # saving what is already current stores nothing
    same = store.save("note", [("email", "txt", "Subject: Two\nv2\n")], author="carol", now=T0)
    assert same.version is None and count_rows(store) == 3

    view = store.get("note")
    assert (view.version, view.latest) == (2, 2)
    assert [(h.version, h.author, h.created_at, h.parts) for h in view.history] == [
        (1, "alice", T0, ("email.txt",)),
        (2, "bob", T0 + timedelta(hours=1), ("email.html", "email.txt")),
    ]
    parts = {p.key: p for p in view.parts}
    assert parts[("email", "txt")].source == "database" and parts[("email", "txt")].has_file
    assert parts[("email", "html")].body == "<p>{{ subject.key }}</p>"

    # version 1: the txt as saved then, no html yet (no file either)
    old = store.get("note", 1)
    assert [(p.key, p.body, p.version) for p in old.parts] == [(("email", "txt"), v1, 1)]

    # restore = version 1's bodies saved again as a new version; later parts stay
    r = store.restore("note", 1, author="dave", now=T0 + timedelta(hours=2))
    assert (r.version, r.changed) == (3, ["email.txt"])
    now = {p.key: p for p in store.get("note").parts}
    assert now[("email", "txt")].body == v1 and now[("email", "txt")].author == "dave"
    assert now[("email", "html")].version == 2

    summary = {s.name: s for s in store.summaries()}["note"]
    assert summary.latest == 3
    assert [(p.key, p.source, p.version) for p in summary.parts] == [
        (("email", "html"), "database", 2),
        (("email", "txt"), "database", 3),
    ]


def test_a_file_only_template_is_listed_and_read(store: TemplateStore, tdir: Path) -> None:
    (tdir / "other.sms.txt").write_text("Hi {{ recipient.name }}\n")
    names = {s.name: s for s in store.summaries()}
    assert names["other"].latest is None and names["other"].parts[0].source == "file"
    view = store.get("other")
    assert view.version is None and view.parts[0].body == "Hi {{ recipient.name }}\n"


# --------------------------------------------------------------------------- refused saves


@pytest.mark.parametrize(
    ("body", "line", "says"),
    [
        ("Subject: x\n\n{% if %}\n", 3, "Expected an expression"),
        ("Subject: {{ subject.key \nbody\n", 1, "unexpected"),
        ("Hi\n{{ recipient.__class__.__mro__ }}\n", 2, "not allowed"),
        ("Hi\n{{ recipient|attr('__class__') }}\n", 2, "not allowed"),
        ("Hi\n\n{{ subjet.key }}\n", 3, "'subjet' is undefined"),
        ("Hi\n{{ subject.key|nosuchfilter }}\n", 2, "nosuchfilter"),
        ("Hi\n{{ attributes.update({'a': 1}) }}\n", 2, "not allowed"),
        ("Hi\n{% include 'missing.email.txt' %}\n", 2, "not found"),
    ],
)
def test_an_invalid_template_is_refused_and_nothing_saved(
    store: TemplateStore, body: str, line: int, says: str
) -> None:
    store.save("note", [("email", "txt", "ok {{ subject.key }}\n")], author="a", now=T0)
    before = count_rows(store)
    with pytest.raises(TemplateInvalid) as info:
        store.save("note", [("email", "txt", body)], author="a", now=T0)
    assert (info.value.file, info.value.line) == ("note.email.txt", line)
    assert says in str(info.value) and str(info.value).startswith(f"note.email.txt, line {line}")
    assert count_rows(store) == before
    assert store.override("note.email.txt") == "ok {{ subject.key }}\n"


def test_one_bad_part_refuses_the_whole_save(store: TemplateStore) -> None:
    with pytest.raises(TemplateInvalid) as info:
        store.save(
            "note",
            [("email", "txt", "fine\n"), ("email", "html", "<p>{% for %}</p>")],
            author="a",
            now=T0,
        )
    assert info.value.file == "note.email.html" and info.value.field == "parts.1.body"
    assert count_rows(store) == 0


def test_missing_sample_data_is_a_warning_not_a_refusal(store: TemplateStore) -> None:
    s = store.save(
        "note",
        [("email", "txt", "Due {{ money(attributes.amount, 'EUR') }}\n")],
        author="a",
        now=T0,
    )
    assert s.version == 1
    assert len(s.warnings) == 1 and "amount" in s.warnings[0]


def test_names_are_checked(store: TemplateStore) -> None:
    from duly.core.errors import InvalidInput

    for name, channel, ext in (("../x", "email", "txt"), ("a", "e mail", "txt"), ("a", "e", "md")):
        with pytest.raises(InvalidInput):
            store.save(name, [(channel, ext, "x")], author="a", now=T0)
    assert count_rows(store) == 0


def test_a_schedule_rules_collections_are_names_its_templates_may_read(
    db_url: str, tdir: Path
) -> None:
    rf = load_rules_text(RULES + DIGEST, templates_dir=str(tdir))
    db = make_engine(db_url)
    try:
        store = TemplateStore(db, tdir, rules=rf)
        body = "{{ collected.open_tickets|length }}: {% for t in open_tickets %}{{ t.key }}{% endfor %}"
        assert store.save("digest", [("email", "txt", body)], author="a", now=T0).version == 1
        # not collected by the rule that uses "note"
        with pytest.raises(TemplateInvalid, match="'open_tickets' is undefined"):
            store.save("note", [("email", "txt", "{{ open_tickets }}")], author="a", now=T0)
        # a template no rule uses yet may read any rule's collections
        assert store.save("new", [("email", "txt", "{{ open_tickets }}")], author="a", now=T0)
    finally:
        db.dispose()


def test_context_names_match_the_dispatcher() -> None:
    """The names a template may read are the ones the dispatcher gives it."""
    rf = load_rules_text(RULES, check_templates=False)
    db = make_engine("sqlite:///:memory:")
    row = DeliveryRow(
        1, Identity("note", None, 0, "ticket/T1", "r1", "email"), "sending", "reminder",
        0, T0, T0, None, 0, None, None, None,
    )  # fmt: skip
    ctx = Dispatcher(Engine(rf, db), {}, send_workers=1)._context(_Work(row), T0, "UTC")
    assert set(ctx) == CONTEXT_NAMES


# --------------------------------------------------------------------------- rendering


def test_the_database_version_wins_for_the_dispatcher(db_url: str, tmp_path: Path, tdir) -> None:  # noqa: ANN001
    rf = load_rules_text(RULES, path=str(tmp_path / "duly.yaml"), templates_dir=str(tdir))
    db = make_engine(db_url)
    try:
        clock = VirtualClock(T0)
        engine = Engine(rf, db, clock=clock)
        store = TemplateStore(db, tdir)
        renderer = Renderer(tdir, loader_overrides=store.override)
        disp = Dispatcher(engine, {"email": OutboxChannel("email")}, renderer, send_workers=1)
        engine.put_recipient(Recipient("r1", name="Ann", email="ann@example.test"))

        def send(key: str) -> str:
            engine.upsert_subject(SubjectInput("ticket", key, {"status": "open"}, {"owner": "r1"}))
            disp.run_once()
            with db.connect() as c:
                return str(
                    c.execute(
                        sa.select(deliveries.c.title).where(deliveries.c.subject == f"ticket/{key}")
                    ).scalar_one()
                )

        assert send("T1") == "From the file: T1"
        store.save(
            "note",
            [("email", "txt", "Subject: From the database: {{ subject.key }}\nHi\n")],
            author="a",
            now=T0,
        )
        assert send("T2") == "From the database: T2"
        store.restore("note", 1, author="a", now=T0)  # same body again: no new version
        store.save("note", [("email", "txt", "Subject: Version 2\nHi\n")], author="a", now=T0)
        assert send("T3") == "Version 2"
    finally:
        db.dispose()


def test_override_is_a_dict_lookup_between_refreshes(store: TemplateStore) -> None:
    store.save("note", [("email", "txt", "x\n")], author="a", now=T0)
    store.refresh_seconds = 60
    store.override("note.email.txt")
    statements: list[str] = []
    sa.event.listen(store.db, "before_cursor_execute", lambda *a: statements.append(a[2]))
    for _ in range(10_000):
        assert store.override("note.email.txt") == "x\n"
        assert store.override("other.email.txt") is None
    assert statements == []


OTHER_PROCESS = """
import sys, time
from duly.store.db import make_engine
from duly.delivery.templates import TemplateStore

store = TemplateStore(make_engine(sys.argv[1]), None, refresh=float(sys.argv[2]))
first = store.override("note.email.txt")
print("ready", flush=True)
end = time.monotonic() + 20
while time.monotonic() < end:
    body = store.override("note.email.txt")
    if body != first:
        print("seen", repr(body), flush=True)
        break
    time.sleep(0.01)
"""


def test_another_process_sees_a_save_within_the_refresh_time(store: TemplateStore) -> None:
    refresh = 0.5
    store.save("note", [("email", "txt", "old\n")], author="a", now=T0)
    url = store.db.url.render_as_string(hide_password=False)
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(OTHER_PROCESS), url, str(refresh)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        started = time.monotonic()
        store.save("note", [("email", "txt", "new\n")], author="a", now=T0)
        line = proc.stdout.readline().strip()
        took = time.monotonic() - started
    finally:
        proc.wait(timeout=30)
    assert line == "seen 'new\\n'"
    assert took < refresh + 1.0, took


# --------------------------------------------------------------------------- HTTP


def test_http_api(db_url: str, tmp_path: Path, tdir: Path) -> None:
    (tmp_path / "duly.yaml").write_text(RULES + DIGEST)
    with live_server(tmp_path, rules=tmp_path / "duly.yaml", database=db_url) as srv:
        h = {"Authorization": f"Bearer {srv.key}"}
        with httpx.Client(base_url=srv.url, headers=h, timeout=10) as c:
            assert httpx.get(f"{srv.url}/v1/templates").status_code == 401
            listed = c.get("/v1/templates").json()["templates"]
            assert listed[0]["name"] == "digest"
            assert listed[1:] == [
                {
                    "name": "note",
                    "latest_version": None,
                    "parts": [
                        {
                            "channel": "email",
                            "ext": "txt",
                            "source": "file",
                            "version": None,
                            "overrides_file": False,
                        }
                    ],
                }
            ]
            # refused: names the file and line; nothing saved
            r = c.put(
                "/v1/templates/note",
                json={"channel": "email", "ext": "txt", "body": "Subject: x\n{% endif %}\n"},
            )
            assert r.status_code == 422, r.text
            assert r.json()["error"]["code"] == "template_invalid"
            assert r.json()["template_error"]["file"] == "note.email.txt"
            assert r.json()["template_error"]["line"] == 2
            assert c.get("/v1/templates/note").json()["latest_version"] is None

            body = "Subject: DB {{ subject.key }} for {{ recipient.name }}\n{{ attributes.x }}\n"
            r = c.put("/v1/templates/note", json={"channel": "email", "body": body})
            assert r.status_code == 200, r.text
            saved = r.json()
            assert (saved["saved"], saved["version"], saved["changed"]) == (True, 1, ["email.txt"])
            assert "attributes" in saved["warnings"][0] or "'x'" in saved["warnings"][0]
            part = saved["template"]["parts"][0]
            assert (part["source"], part["author"], part["overrides_file"]) == (
                "database",
                "tests",  # the API key's name
                True,
            )
            r = c.put(
                "/v1/templates/note",
                json=[{"channel": "email", "ext": "html", "body": "<p>{{ subject.key }}</p>"}],
            )
            assert r.json()["version"] == 2

            # the dispatcher in the server renders the database version
            c.put("/v1/recipients/r1", json={"name": "Ann", "email": "ann@example.test"})
            c.put(
                "/v1/subjects/ticket/T1",
                json={
                    "attributes": {"status": "open", "x": "hello"},
                    "recipients": {"owner": "r1"},
                },
            )
            end = time.monotonic() + 10
            sent: list[dict] = []
            while time.monotonic() < end and not sent:
                items = c.get("/v1/deliveries", params={"state": "sent"}).json()["items"]
                sent = items
                time.sleep(0.1)
            assert sent and sent[0]["title"] == "DB T1 for Ann"

            # preview: real data, a past version, unsaved source, a render error
            p = c.post(
                "/v1/templates/note/preview", json={"channel": "email", "subject": "ticket/T1"}
            )
            assert p.status_code == 200, p.text
            assert p.json()["title"] == "DB T1 for Ann" and p.json()["data"] == "real"
            assert p.json()["text"] == "hello\n" and "T1" in p.json()["html"]
            p = c.post(
                "/v1/templates/note/preview",
                json={"channel": "email", "version": 1, "subject": "ticket/T1"},
            )
            assert p.status_code == 200, p.text
            assert p.json()["html"] is None  # version 1 had no html part
            p = c.post(
                "/v1/templates/note/preview",
                json={"channel": "email", "body": "Subject: Draft {{ recipient.name }}\n"},
            )
            assert p.json()["title"] == "Draft Sam Sample" and p.json()["data"] == "sample"
            p = c.post(
                "/v1/templates/note/preview",
                json={
                    "channel": "email",
                    "subject": "ticket/T1",
                    "body": "a\n{{ attributes.y.z }}",
                },
            )
            assert p.status_code == 422
            assert p.json()["template_error"] == {
                "file": "note.email.txt",
                "line": 2,
                "reason": "'dict object' has no attribute 'y'",
            }
            assert (
                c.post(
                    "/v1/templates/note/preview", json={"channel": "email", "subject": "ticket/NO"}
                ).status_code
                == 404
            )

            # a schedule rule's collections are read from the database for a preview
            p = c.post("/v1/templates/digest/preview", json={"channel": "email"})
            assert p.status_code == 200, p.text
            assert (p.json()["title"], p.json()["text"]) == ("1 open", "T1 \n")

            # history, an old version, restore
            one = c.get("/v1/templates/note", params={"version": 1}).json()
            assert [p["ext"] for p in one["parts"]] == ["txt"] and one["version"] == 1
            assert c.get("/v1/templates/note", params={"version": 7}).status_code == 404
            r = c.post("/v1/templates/note/restore", json={"version": 1})
            assert (r.json()["saved"], r.json()["version"]) == (False, None)  # txt unchanged
            hist = c.get("/v1/templates/note").json()["history"]
            assert [(v["version"], v["author"], v["parts"]) for v in hist] == [
                (1, "tests", ["email.txt"]),
                (2, "tests", ["email.html"]),
            ]
            # version 0 is the wording shipped in the file: read, preview, restore
            shipped = (tdir / "note.email.txt").read_text()
            zero = c.get("/v1/templates/note", params={"version": 0}).json()
            assert [(p["source"], p["body"]) for p in zero["parts"]] == [("file", shipped)]
            p = c.post("/v1/templates/note/preview", json={"channel": "email", "version": 0})
            assert p.status_code == 200, p.text
            assert not p.json()["title"].startswith("DB ")
            r = c.post("/v1/templates/note/restore", json={"version": 0})
            assert (r.json()["saved"], r.json()["version"], r.json()["changed"]) == (
                True,
                3,
                ["email.txt"],
            )
            now = {p["ext"]: p["body"] for p in c.get("/v1/templates/note").json()["parts"]}
            assert now["txt"] == shipped  # the html part, never shipped, stays
            assert now["html"] == "<p>{{ subject.key }}</p>"
            assert c.get("/v1/templates/note", params={"version": -1}).status_code == 422
            assert c.get("/v1/templates/nope").status_code == 404
            assert c.get("/v1/templates/bad..%2F..").status_code in (404, 422)
