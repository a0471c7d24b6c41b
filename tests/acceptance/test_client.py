"""`duly.client` against a real `duly serve` (tests/live.py), one server for the module.

Every flow runs twice, through :class:`Client` and through :class:`AsyncClient` (``duly``
fixture, ids ``[sync]`` / ``[async]``): the async one is driven by :class:`Blocking`, which
runs each of its coroutines to completion on a private event loop, so one flow's code covers
both clients. ``test_async_client_natively`` uses the async client as an app would, with
requests in flight at once.

Answers no real server gives on demand (a 5xx, a proxy's HTML page) come from
``httpx.MockTransport``, the network edge the client lets tests swap.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from duly.client import (
    UNSET,
    AsyncClient,
    BatchOut,
    Client,
    ClientError,
    Conflict,
    DeliveryDetail,
    DeliveryOut,
    DulyAPIError,
    EventOut,
    Health,
    NotFound,
    RecipientOut,
    ReminderOut,
    ServerError,
    SubjectBatchItem,
    SubjectDetail,
    SubjectOut,
    TooLarge,
    TransportError,
    Unauthorized,
    ValidationError,
)
from live import Live, free_port, live_server  # tests/ is on sys.path (conftest.py)

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
TEMPLATE = "Subject: {{ subject.key }} for {{ recipient.name }}\nHello\n"
FAR = datetime(2030, 3, 15, 12, 0, tzinfo=UTC)
PARIS = timezone(timedelta(hours=1))  # March 2030 in Paris: UTC+1


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("client")
    (tmp / "templates").mkdir()
    for name in ("invoice-reminders", "invoice-viewed"):
        (tmp / "templates" / f"{name}.email.txt").write_text(TEMPLATE)
    (tmp / "duly.yaml").write_text(RULES)
    with live_server(tmp, rules=tmp / "duly.yaml") as server:
        with Client(server.url, server.key) as c:
            for tag in ("sync", "async"):
                c.put_recipient(f"ada-{tag}", name="Ada", email=f"ada-{tag}@example.com")
        yield server


class Blocking:
    """An :class:`AsyncClient` with the face of a :class:`Client`: every coroutine runs to
    completion on a private event loop; ``iter_deliveries`` is collected."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._loop = asyncio.new_event_loop()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if inspect.isasyncgenfunction(attr):

            def collect(*args: Any, **kwargs: Any) -> Iterator[Any]:
                async def run() -> list[Any]:
                    return [x async for x in attr(*args, **kwargs)]

                return iter(self._loop.run_until_complete(run()))

            return collect
        if inspect.iscoroutinefunction(attr):
            return lambda *a, **kw: self._loop.run_until_complete(attr(*a, **kw))
        return attr

    def close(self) -> None:
        self._loop.run_until_complete(self._client.aclose())
        self._loop.close()


@pytest.fixture(params=["sync", "async"])
def tag(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def duly(live: Live, tag: str) -> Iterator[Client]:
    """A Client, or an AsyncClient behind :class:`Blocking` (typed as a Client)."""
    if tag == "sync":
        with Client(live.url, live.key) as c:
            yield c
    else:
        b = Blocking(AsyncClient(live.url, live.key))
        yield b  # type: ignore[misc]
        b.close()


def wait_for(fn: Callable[[], T | None], what: str, timeout: float = 10.0) -> T:
    end = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def sent_invoice(due: datetime, customer: str, **attrs: Any) -> dict[str, Any]:
    return {
        "attributes": {"status": "sent", "due_at": due, "amount": 120, **attrs},
        "recipients": {"customer": customer},
    }


# --------------------------------------------------------------------------- the API


def test_the_two_clients_offer_the_same_documented_methods() -> None:
    def public(cls: type) -> dict[str, Any]:
        return {
            n: f
            for n, f in vars(cls).items()
            if not n.startswith("_") and (callable(f) or isinstance(f, property))
        }

    sync, aio = public(Client), public(AsyncClient)
    assert set(sync) - {"close"} == set(aio) - {"aclose"}
    for name, f in sync.items():
        assert (f.__doc__ or "").strip(), f"Client.{name} has no docstring"
        if isinstance(f, property) or name == "close":
            continue
        assert inspect.signature(f).parameters == inspect.signature(aio[name]).parameters, name
        asyncf = aio[name]
        assert inspect.iscoroutinefunction(asyncf) or inspect.isasyncgenfunction(asyncf), name
        assert (asyncf.__doc__ or "").strip(), f"AsyncClient.{name} has no docstring"
    # every endpoint of docs/reference/http-api.md that exists today has its method
    for name in (
        "put_recipient get_recipient delete_recipient put_subject get_subject delete_subject "
        "upsert_subjects post_event list_deliveries iter_deliveries get_delivery send_now "
        "cancel retry create_reminder get_reminder update_reminder delete_reminder rules "
        "check_rules simulate healthz readyz list_templates get_template put_template "
        "restore_template preview_template stats"
    ).split():
        assert name in sync, name


def test_importing_the_client_needs_no_server_parts() -> None:
    import subprocess
    import sys

    code = (
        "import sys, duly.client\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('fastapi', 'starlette', 'uvicorn', 'sqlalchemy') or m.startswith('duly.engine')]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- flows


def test_health(duly: Client) -> None:
    assert duly.healthz() == Health(status="ok")
    ready = duly.readyz()
    assert ready.ok and ready.checks == {"database": "ok", "dispatcher": "ok"}


def test_recipients(duly: Client, tag: str) -> None:
    rid = f"grace-{tag}"
    r = duly.put_recipient(
        rid,
        name="Grace",
        email="grace@example.com",
        timezone="America/New_York",
        addresses={"slack": "U1"},
        consent={"promotional": True, "channels": {"sms": False}},
    )
    assert isinstance(r, RecipientOut)
    assert (r.id, r.timezone, r.addresses) == (rid, "America/New_York", {"slack": "U1"})
    assert r.consent.promotional is True and r.consent.channels == {"sms": False}
    assert duly.get_recipient(rid) == r
    replaced = duly.put_recipient(rid, name="Grace H.")  # the whole state: the rest is cleared
    assert replaced.email is None and replaced.addresses == {}
    duly.delete_recipient(rid)
    with pytest.raises(NotFound) as exc:
        duly.get_recipient(rid)
    assert (exc.value.status, exc.value.code, exc.value.field) == (404, "not_found", "id")
    assert rid in exc.value.message and rid in str(exc.value)
    with pytest.raises(NotFound):
        duly.delete_recipient(rid)
    with pytest.raises(ValidationError) as bad:
        duly.put_recipient(rid, timezone="Mars/Olympus")
    assert (bad.value.status, bad.value.code, bad.value.field) == (422, "invalid", "timezone")


def test_put_subject_returns_its_plan_and_moves_it(duly: Client, tag: str) -> None:
    key = f"PLAN-{tag}"
    # an aware datetime in another zone is the same instant: 13:00+01:00 == 12:00Z
    due = FAR.astimezone(PARIS)
    s = duly.put_subject(
        "invoice",
        key,
        attributes={"status": "sent", "due_at": due, "issued": date(2030, 2, 1)},
        recipients={"customer": f"ada-{tag}"},
    )
    assert isinstance(s, SubjectOut) and s.revision == 1
    assert s.attributes["due_at"] == "2030-03-15T13:00:00+01:00"
    assert s.attributes["issued"] == "2030-02-01"
    assert s.recipients == {"customer": [f"ada-{tag}"]}
    plan = {d.step: d for d in s.plan}
    assert all(isinstance(d, DeliveryOut) for d in s.plan)
    assert plan["due-soon"].planned_at == FAR - timedelta(days=3)
    assert plan["overdue"].planned_at == FAR + timedelta(days=1)
    assert all(d.planned_at.tzinfo is not None for d in s.plan)

    moved = duly.put_subject("invoice", key, **sent_invoice(FAR + timedelta(days=10), f"ada-{tag}"))
    assert moved.revision == 2
    new = {d.step: d for d in moved.plan}
    assert new["due-soon"].planned_at == FAR + timedelta(days=7)
    assert {k: d.id for k, d in new.items()} == {k: d.id for k, d in plan.items()}

    hold = datetime(2030, 1, 1, 9, tzinfo=PARIS)
    held = duly.put_subject("invoice", key, **sent_invoice(FAR, f"ada-{tag}"), hold_until=hold)
    assert held.hold_until == hold and held.hold_until.utcoffset() == timedelta(0)

    detail = duly.get_subject("invoice", key)
    assert isinstance(detail, SubjectDetail)
    assert [d.id for d in detail.plan] == [d.id for d in held.plan] and detail.history == []

    duly.delete_subject("invoice", key)
    with pytest.raises(NotFound):
        duly.get_subject("invoice", key)
    with pytest.raises(ValidationError) as exc:
        duly.put_subject("invoice", key, hold_until=datetime(2030, 1, 1))  # naive: no instant
    assert exc.value.field == "hold_until"


def test_an_indefinite_hold_reads_back_indefinite(duly: Client, tag: str) -> None:
    key = f"IND-{tag}"
    held = duly.put_subject(
        "invoice", key, **sent_invoice(FAR, f"ada-{tag}"), hold_until="indefinite"
    )
    assert held.hold_until == "indefinite"
    # both steps fall due during the hold: the latest waits for it to be cleared
    assert [(d.step, d.due_at, d.held_until_cleared) for d in held.plan] == [
        ("overdue", None, True)
    ]
    detail = duly.get_subject("invoice", key)
    assert detail.hold_until == "indefinite"
    assert [d.held_until_cleared for d in detail.plan] == [True]
    out = duly.upsert_subjects(
        [{"kind": "invoice", "key": key, **sent_invoice(FAR, f"ada-{tag}"), "hold_until": None}]
    )
    assert out.ok == 1
    cleared = duly.get_subject("invoice", key)
    assert cleared.hold_until is None
    assert {d.step for d in cleared.plan} == {"due-soon", "overdue"}
    assert all(d.due_at == d.planned_at and not d.held_until_cleared for d in cleared.plan)


def test_a_date_attribute_that_is_not_a_date_is_a_problem_not_an_error(
    duly: Client, tag: str
) -> None:
    s = duly.put_subject(
        "invoice", f"BAD-{tag}", **sent_invoice(FAR, f"ada-{tag}", due_at="next Tuesday")
    )
    assert s.plan == [] and s.problems and "next Tuesday" in s.problems[0]


def test_upsert_subjects_answers_per_item(duly: Client, tag: str) -> None:
    out = duly.upsert_subjects(
        [
            {"kind": "invoice", "key": f"B1-{tag}", **sent_invoice(FAR, f"ada-{tag}")},
            {"kind": "in/voice", "key": f"B2-{tag}"},
            SubjectBatchItem(
                kind="invoice",
                key=f"B3-{tag}",
                attributes={"status": "sent", "due_at": "2030-03-15T12:00:00Z"},
                recipients={"customer": f"ada-{tag}"},
                hold_until=FAR,
            ),
        ]
    )
    assert isinstance(out, BatchOut) and (out.ok, out.failed) == (2, 1)
    assert [r.ok for r in out.results] == [True, False, True]
    assert [r.planned for r in out.results] == [2, None, 2]
    err = out.results[1].error
    assert err is not None and (err.code, err.field) == ("invalid", "kind")
    assert duly.get_subject("invoice", f"B3-{tag}").hold_until == FAR


def test_events_are_idempotent(duly: Client, tag: str) -> None:
    duly.put_subject("invoice", f"EV-{tag}", **sent_invoice(FAR, f"ada-{tag}"))
    first = duly.post_event(f"view-{tag}", "invoice.viewed", f"invoice/EV-{tag}", {"n": 1})
    assert first == EventOut(id=f"view-{tag}", accepted=True)
    again = duly.post_event(f"view-{tag}", "invoice.viewed", f"invoice/EV-{tag}", {"n": 1})
    assert again.accepted is False
    fired = duly.list_deliveries(rule="invoice-viewed", subject=f"invoice/EV-{tag}")
    assert len(fired.items) == 1 and fired.next_cursor is None
    with pytest.raises(ValidationError) as exc:
        duly.post_event(f"view2-{tag}", "invoice.viewed", "invoice/NOPE")
    assert (exc.value.status, exc.value.code, exc.value.field) == (
        422,
        "unknown_subject",
        "subject",
    )


def test_iter_deliveries_follows_the_cursor(duly: Client, tag: str) -> None:
    who = f"pager-{tag}"
    items = [{"kind": "invoice", "key": f"P{i}-{tag}", **sent_invoice(FAR, who)} for i in range(60)]
    assert duly.upsert_subjects(items).ok == 60
    every = duly.list_deliveries(recipient=who, limit=500)
    assert every.next_cursor is None and len(every.items) == 120
    first = duly.list_deliveries(recipient=who, limit=7)
    assert len(first.items) == 7 and first.next_cursor
    paged = [d.id for d in duly.iter_deliveries(recipient=who, page_size=7)]
    assert paged == [d.id for d in every.items] and len(set(paged)) == 120
    # the due-time range, in any zone: [from_, to)
    window = list(
        duly.iter_deliveries(
            recipient=who,
            state="pending",
            from_=(FAR - timedelta(days=3)).astimezone(PARIS),
            to=FAR + timedelta(days=1),
        )
    )
    assert len(window) == 60 and {d.step for d in window} == {"due-soon"}


def test_delivery_actions(duly: Client, tag: str) -> None:
    plan = duly.put_subject("invoice", f"ACT-{tag}", **sent_invoice(FAR, f"ada-{tag}")).plan
    first, second = sorted(plan, key=lambda d: d.planned_at)
    cancelled = duly.cancel(first.id)
    assert (cancelled.state, cancelled.reason) == ("cancelled", "manual")
    with pytest.raises(Conflict) as exc:
        duly.cancel(first.id)
    assert (exc.value.status, exc.value.code, exc.value.field) == (409, "conflict", "state")
    with pytest.raises(Conflict):
        duly.send_now(first.id)
    duly.retry(first.id)

    def sent(did: int) -> DeliveryDetail | None:
        d = duly.get_delivery(did)
        return d if d.state == "sent" else None

    done = wait_for(lambda: sent(first.id), "the retried delivery")
    assert isinstance(done, DeliveryDetail) and done.sent_at is not None
    assert done.sent_at.tzinfo is not None and done.planned_at == first.planned_at
    assert done.content.to == f"ada-{tag}@example.com"
    assert done.content.title == f"ACT-{tag} for Ada"
    assert done.history[-1].outcome == "sent"
    for action in (duly.retry, duly.cancel, duly.send_now):
        with pytest.raises(Conflict):
            action(first.id)
    now = duly.send_now(second.id)
    assert now.planned_at == second.planned_at and now.due_at < FAR
    wait_for(lambda: sent(second.id), "the delivery sent now")
    with pytest.raises(NotFound):
        duly.get_delivery(987654321)


def test_reminders(duly: Client, tag: str) -> None:
    send_at = (datetime.now(UTC) + timedelta(days=7)).replace(microsecond=0).astimezone(PARIS)
    r = duly.create_reminder(
        title="Call back", recipients=[f"ada-{tag}"], send_at=send_at, message="Hi"
    )
    assert isinstance(r, ReminderOut) and r.send_at == send_at and r.channels == ["email"]
    assert r.counts.pending == 1 and r.subject is None
    duly.put_subject("invoice", f"REM-{tag}", attributes={"status": "draft"})
    u = duly.update_reminder(r.id, title="Call back today", subject=f"invoice/REM-{tag}")
    assert (u.title, u.message, u.send_at, u.subject) == (
        "Call back today",
        "Hi",
        send_at,
        f"invoice/REM-{tag}",
    )
    u = duly.update_reminder(r.id, subject=None, message=UNSET)  # None detaches; UNSET keeps
    assert (u.subject, u.message) == (None, "Hi")
    assert duly.get_reminder(r.id) == u
    duly.delete_reminder(r.id)
    with pytest.raises(NotFound):
        duly.get_reminder(r.id)
    for bad, field in (
        ({"send_at": datetime(2030, 1, 1)}, "send_at"),  # naive
        ({"send_at": datetime(2020, 1, 1, tzinfo=UTC)}, "send_at"),  # past
        ({"channels": []}, "channels"),
        ({"recipients": []}, "recipients"),
    ):
        args: dict[str, Any] = {"title": "x", "recipients": ["a"], "send_at": send_at, **bad}
        with pytest.raises(ValidationError) as exc:
            duly.create_reminder(**args)
        assert exc.value.field == field, exc.value


@pytest.fixture(scope="module", autouse=True)
def sent_reminders(live: Live) -> dict[str, int]:
    """One reminder per client flavour, due a second after the module starts (so that
    they have been sent by the time the test that needs them runs)."""
    soon = datetime.now(UTC) + timedelta(seconds=1)
    with Client(live.url, live.key) as c:
        return {
            tag: c.create_reminder(title="Soon", recipients=[f"ada-{tag}"], send_at=soon).id
            for tag in ("sync", "async")
        }


def test_a_sent_reminder_raises_conflict(
    duly: Client, tag: str, sent_reminders: dict[str, int]
) -> None:
    rid = sent_reminders[tag]
    wait_for(lambda: duly.get_reminder(rid).counts.sent == 1, "the reminder to be sent")
    with pytest.raises(Conflict) as exc:
        duly.update_reminder(rid, send_at=datetime.now(UTC) + timedelta(days=1))
    assert exc.value.status == 409 and "sent" in exc.value.message
    with pytest.raises(Conflict):
        duly.delete_reminder(rid)


def test_rules_check_and_simulate(duly: Client, tmp_path: Path) -> None:
    rules = duly.rules()
    assert [r.name for r in rules.rules] == ["invoice-reminders", "invoice-viewed"]
    assert rules.timezone == "Europe/London"
    ok = duly.check_rules(RULES)
    assert (ok.ok, ok.rules, ok.errors) == (True, 2, [])
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text(RULES.replace("3d", "3 days"))
    bad = duly.check_rules(bad_file)  # a path object is read
    assert not bad.ok and bad.errors[0].line == 8
    t0 = datetime(2026, 3, 1, 9, tzinfo=UTC)
    out = duly.simulate(
        RULES,
        [
            {"at": t0, "recipient": {"id": "c1", "name": "c1", "email": "c1@x.test"}},
            {
                "at": t0,
                "subject": {
                    "kind": "invoice",
                    "key": "S-1",
                    "attributes": {"status": "sent", "due_at": t0 + timedelta(days=9)},
                    "recipients": {"customer": "c1"},
                },
            },
        ],
        until=t0 + timedelta(days=7),
        templates={f"{n}.email.txt": TEMPLATE for n in ("invoice-reminders", "invoice-viewed")},
    )
    assert [(r["step"], r["outcome"], r["at"], r["title"]) for r in out.rows] == [
        ("due-soon", "sent", "2026-03-07T09:00:00Z", "S-1 for c1")
    ]
    assert out.warnings == []
    with pytest.raises(ValidationError) as exc:
        duly.simulate("rules: [", "")
    assert (exc.value.code, exc.value.field) == ("invalid_rules", "rules")


def test_templates(duly: Client, tag: str) -> None:
    pytest.importorskip("duly.api.templates")
    name = f"scratch-{tag}"
    files = {t.name: t for t in duly.list_templates().templates}
    assert [(p.channel, p.ext, p.source) for p in files["invoice-reminders"].parts] == [
        ("email", "txt", "file")
    ]
    first = duly.put_template(
        name, [{"channel": "email", "ext": "txt", "body": "Subject: Hi {{ subject.key }}\nBody"}]
    )
    assert first.saved and first.version == 1 and first.changed == ["email.txt"]
    second = duly.put_template(name, [{"channel": "email", "body": "Subject: Hello\nBody"}])
    assert second.version == 2
    same = duly.put_template(name, [{"channel": "email", "body": "Subject: Hello\nBody"}])
    assert not same.saved
    got = duly.get_template(name)
    assert got.latest_version == 2 and got.parts[0].body == "Subject: Hello\nBody"
    assert duly.get_template(name, version=1).parts[0].body.startswith("Subject: Hi")
    assert [h.version for h in got.history] == [1, 2]  # oldest first
    assert duly.restore_template(name, 1).version == 3

    duly.put_subject("invoice", f"TPL-{tag}", **sent_invoice(FAR, f"ada-{tag}"))
    real = duly.preview_template(name, channel="email", subject=f"invoice/TPL-{tag}")
    assert (real.title, real.data, real.recipient) == (f"Hi TPL-{tag}", "real", f"ada-{tag}")
    draft = duly.preview_template(name, channel="email", body="Subject: Draft\nx")
    assert draft.title == "Draft" and draft.data == "sample"

    with pytest.raises(ValidationError) as exc:
        duly.put_template(name, [{"channel": "email", "body": "Subject: {{ broken\n"}])
    assert exc.value.extra["template_error"]["line"] == 1
    with pytest.raises(NotFound):
        duly.get_template(f"never-{tag}")


def test_stats(duly: Client) -> None:
    pytest.importorskip("duly.api.stats")
    now = datetime.now(UTC)
    st = duly.stats(from_=(now - timedelta(days=1)).astimezone(PARIS), to=now + timedelta(hours=1))
    assert st.from_ == now - timedelta(days=1) and st.total >= 0 and st.pending >= 0
    assert all(d.day for d in st.by_day)
    assert duly.stats().to.tzinfo is not None
    with pytest.raises(ValidationError) as exc:
        duly.stats(from_=now, to=now - timedelta(days=1))
    assert exc.value.field == "from"


# --------------------------------------------------------------------------- errors


def test_typed_errors_from_a_real_server(live: Live, tag: str) -> None:
    def client(key: str, url: str = live.url, timeout: float = 10.0) -> Client:
        if tag == "sync":
            return Client(url, key, timeout=timeout)
        return Blocking(AsyncClient(url, key, timeout=timeout))  # type: ignore[return-value]

    c = client("duly_" + "A" * 43)
    with pytest.raises(Unauthorized) as exc:
        c.rules()
    assert (exc.value.status, exc.value.code) == (401, "unauthorized")
    assert isinstance(exc.value, DulyAPIError) and isinstance(exc.value, ClientError)
    assert c.healthz().ok  # no key needed
    c.close()

    c = client(live.key)
    with pytest.raises(TooLarge) as big:
        c.put_subject("invoice", f"BIG-{tag}", attributes={"notes": "x" * 1_100_000})
    assert (big.value.status, big.value.code) == (413, "too_large")
    c.close()

    # nothing listens: connection refused
    c = client(live.key, url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TransportError) as down:
        c.rules()
    assert isinstance(down.value.__cause__, httpx.ConnectError)
    assert not isinstance(down.value, DulyAPIError)
    c.close()

    # a peer that accepts the connection and never answers: the timeout
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        c = client(live.key, url=f"http://127.0.0.1:{mute.getsockname()[1]}", timeout=0.3)
        with pytest.raises(TransportError) as slow:
            c.rules()
        assert isinstance(slow.value.__cause__, httpx.TimeoutException)
        c.close()


def mock_client(tag: str, handler: Callable[[httpx.Request], httpx.Response]) -> Client:
    transport = httpx.MockTransport(handler)
    if tag == "sync":
        return Client("http://duly.test/base", "duly_k", transport=transport)
    return Blocking(AsyncClient("http://duly.test/base", "duly_k", transport=transport))  # type: ignore[return-value]


@pytest.mark.parametrize(
    "status,body,exc_type,code,message",
    [
        (
            500,
            {"error": {"code": "internal", "message": "internal error (logged)", "field": None}},
            ServerError,
            "internal",
            "internal error (logged)",
        ),
        (502, "<html>Bad Gateway</html>", ServerError, "http_502", "<html>Bad Gateway</html>"),
        (503, "", ServerError, "http_503", "Service Unavailable"),
        (
            405,
            {"error": {"code": "method_not_allowed", "message": "no", "field": None}},
            DulyAPIError,
            "method_not_allowed",
            "no",
        ),
        (
            400,
            {"error": {"code": "invalid_json", "message": "bad", "field": None}},
            ValidationError,
            "invalid_json",
            "bad",
        ),
    ],
)
def test_every_error_answer_is_typed(
    tag: str, status: int, body: Any, exc_type: type[DulyAPIError], code: str, message: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, dict):
            return httpx.Response(status, json=body)
        return httpx.Response(status, text=body)

    c = mock_client(tag, handler)
    with pytest.raises(exc_type) as exc:
        c.get_recipient("x")
    assert type(exc.value) is exc_type
    assert (exc.value.status, exc.value.code, exc.value.message) == (status, code, message)
    assert exc.value.response is not None and exc.value.response.status_code == status
    c.close()


def test_requests_are_formed_as_the_api_expects(tag: str) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/readyz"):
            return httpx.Response(503, json={"status": "unavailable", "checks": {"x": "stopped"}})
        if request.url.path.endswith("/deliveries"):
            return httpx.Response(200, json={"items": [], "next_cursor": None})
        return httpx.Response(200, text="not json")

    c = mock_client(tag, handler)
    not_ready = c.readyz()  # a 503 from readyz is an answer
    assert not not_ready.ok and not_ready.checks == {"x": "stopped"}
    c.list_deliveries(subject="invoice/A 1", from_=datetime(2030, 1, 1, 1, tzinfo=PARIS))
    with pytest.raises(DulyAPIError) as exc:  # a 200 that is not what was asked for
        c.put_subject(
            "in voice",
            "2026/7",
            attributes={"at": datetime(2030, 1, 1, tzinfo=UTC), "amount": Decimal("9.90")},
        )
    assert exc.value.code == "bad_response"
    c.close()
    ready, listing, put = seen
    assert ready.headers["authorization"] == "Bearer duly_k"
    assert ready.headers["user-agent"].startswith("duly-client/")
    assert ready.url == "http://duly.test/base/readyz"
    assert listing.url.params["from"] == "2030-01-01T01:00:00+01:00"
    assert listing.url.params["subject"] == "invoice/A 1"
    assert put.method == "PUT" and put.url.raw_path == b"/base/v1/subjects/in%20voice/2026%2F7"
    assert put.headers["content-type"] == "application/json"
    assert json.loads(put.content) == {
        "attributes": {"at": "2030-01-01T00:00:00Z", "amount": "9.90"},
        "recipients": {},
        "hold_until": None,
    }


def test_an_api_key_is_required() -> None:
    with pytest.raises(ValueError, match="api_key"):
        Client("http://localhost:8000", "")
    with pytest.raises(ValueError, match="api_key"):
        AsyncClient("http://localhost:8000", " ")


# --------------------------------------------------------------------------- async natively


def test_async_client_natively(live: Live) -> None:
    async def main() -> None:
        async with AsyncClient(live.url, live.key) as duly:
            plans = await asyncio.gather(
                *(
                    duly.put_subject("invoice", f"AIO-{i}", **sent_invoice(FAR, "ada-async"))
                    for i in range(20)
                )
            )
            assert [len(p.plan) for p in plans] == [2] * 20
            seen = [d.id async for d in duly.iter_deliveries(recipient="ada-async", page_size=9)]
            assert {d.id for p in plans for d in p.plan} <= set(seen)
            assert len(seen) == len(set(seen))
            with pytest.raises(NotFound):
                await duly.get_subject("invoice", "AIO-none")

    asyncio.run(main())
