"""The inbox channel: items appear when the dispatcher sends, read state, one recipient's
items only, and the notifier that feeds streams (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from duly.core.clock import VirtualClock
from duly.core.model import ChannelConfig, Recipient
from duly.core.rules.loader import load_rules_text
from duly.delivery.channels import build_channel
from duly.delivery.channels.inbox import InboxChannel
from duly.engine.dispatch import Dispatcher
from duly.engine.inbox import InboxNotifier, InboxStore
from duly.engine.service import Engine, ReminderInput
from duly.store.db import make_engine

T0 = datetime(2026, 6, 1, 9, tzinfo=UTC)


@pytest.fixture
def env(db_url: str):  # noqa: ANN201
    rf = load_rules_text("rules: []\n", check_templates=False)
    db = make_engine(db_url)
    clock = VirtualClock(T0)
    eng = Engine(rf, db, clock=clock)
    disp = Dispatcher(eng, {"inbox": InboxChannel("inbox")}, None, send_workers=1)
    for p in ("a", "b"):
        eng.put_recipient(Recipient(p))
    yield eng, disp, clock, InboxStore(db, ("inbox",))
    db.dispose()


def remind(eng: Engine, title: str, at: datetime, to: list[str]) -> int:
    return eng.create_reminder(ReminderInput(title, f"{title} body", at, to, channels=["inbox"]))


def test_the_registry_builds_an_inbox_channel_that_does_no_io() -> None:
    ch = build_channel(ChannelConfig("inbox", "inbox"))
    assert isinstance(ch, InboxChannel)
    from duly.delivery.channels.base import Message

    receipt = ch.send(Message("a", "t", "x", None, "m-1", "a"))
    assert receipt.provider_id == "inbox:m-1"


def test_items_appear_when_sent_newest_first_with_read_state(env) -> None:  # noqa: ANN001
    eng, disp, clock, store = env
    remind(eng, "First", T0 + timedelta(minutes=1), ["a", "b"])
    remind(eng, "Second", T0 + timedelta(minutes=2), ["a"])
    assert store.list("a") == ([], None)
    clock.set(T0 + timedelta(minutes=1))
    disp.run_once()
    clock.set(T0 + timedelta(minutes=2))
    disp.run_once()
    items, nxt = store.list("a")
    assert [i["title"] for i in items] == ["Second", "First"] and nxt is None
    first = items[1]
    assert first["text"] == "First body" and first["rule"] == "@reminder"
    assert first["sent_at"] == "2026-06-01T09:01:00Z" and first["read_at"] is None
    assert store.unread_count("a") == 2 and store.unread_count("b") == 1

    page, nxt = store.list("a", limit=1)
    assert [i["title"] for i in page] == ["Second"] and nxt is not None
    page2, nxt2 = store.list("a", limit=1, cursor=nxt)
    assert [i["title"] for i in page2] == ["First"] and nxt2 is None

    read = store.mark_read("a", first["id"], T0 + timedelta(minutes=3))
    assert read is not None and read["read_at"] == "2026-06-01T09:03:00Z"
    again = store.mark_read("a", first["id"], T0 + timedelta(minutes=9))
    assert again is not None and again["read_at"] == "2026-06-01T09:03:00Z"  # first read kept
    assert store.unread_count("a") == 1
    assert [i["title"] for i in store.list("a", unread=True)[0]] == ["Second"]

    # another recipient's item is not in a's inbox (the API answers 404)
    b_item = store.list("b")[0][0]
    assert store.mark_read("a", b_item["id"], T0) is None
    assert store.get("a", b_item["id"]) is None
    assert store.unread_count("b") == 1


def test_a_bad_cursor_is_refused(env) -> None:  # noqa: ANN001
    _, _, _, store = env
    with pytest.raises(ValueError):
        store.list("a", cursor="nonsense!")


def test_the_notifier_streams_new_sends_to_their_recipient_once(env) -> None:  # noqa: ANN001
    eng, disp, clock, store = env
    remind(eng, "Old", T0, ["a"])
    disp.run_once()  # sent before the stream opens: not streamed
    notifier = InboxNotifier(store)
    disp.on_outcome = notifier.on_outcome

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        ca = notifier.connect("a")
        cb = notifier.connect("b")
        remind(eng, "New", T0 + timedelta(minutes=1), ["a"])
        clock.set(T0 + timedelta(minutes=1))
        await asyncio.to_thread(disp.run_once)
        await asyncio.to_thread(notifier.poll_once)
        await asyncio.to_thread(notifier.poll_once)  # the look-back re-reads: no duplicate
        await asyncio.sleep(0)
        got_a = [ca.queue.get_nowait()[1]["title"] for _ in range(ca.queue.qsize())]
        got_b = [cb.queue.get_nowait()[1]["title"] for _ in range(cb.queue.qsize())]
        # resuming from before the first send replays both
        cr = notifier.connect("a", last_event_id=0)
        await asyncio.sleep(0)
        resumed = [cr.queue.get_nowait()[1]["title"] for _ in range(cr.queue.qsize())]
        for c in (ca, cb, cr):
            notifier.disconnect(c)
        return got_a, got_b, resumed

    got_a, got_b, resumed = asyncio.run(scenario())
    notifier.stop()
    assert got_a == ["New"] and got_b == [] and resumed == ["Old", "New"]
    assert notifier.connected() == 0


def test_a_quiet_stream_does_not_make_every_poll_reread_from_where_it_connected(  # noqa: ANN001
    env,
) -> None:
    """Stream b gets nothing while a gets many items: each poll reads only what is new
    (plus the look-back), not everything since b connected."""
    from duly.engine import inbox as inbox_mod

    eng, disp, clock, store = env
    notifier = InboxNotifier(store)
    read: list[int] = []
    sent_since = store.sent_since

    def counting(after, recipients, limit=5000):  # noqa: ANN001, ANN202
        rows = sent_since(after, recipients, limit)
        read.append(len(rows))
        return rows

    store.sent_since = counting  # type: ignore[method-assign]

    async def scenario() -> int:
        ca = notifier.connect("a")
        cb = notifier.connect("b")
        for i in range(3):
            at = T0 + timedelta(minutes=i + 1)
            for j in range(5):
                remind(eng, f"N{i}.{j}", at, ["a"])
            clock.set(at)
            await asyncio.to_thread(disp.run_once)
            await asyncio.to_thread(notifier.poll_once)
        await asyncio.sleep(0)
        n = ca.queue.qsize() + cb.queue.qsize()
        notifier.disconnect(ca)
        notifier.disconnect(cb)
        return n

    old = inbox_mod.LOOKBACK
    inbox_mod.LOOKBACK = 2  # log ids: smaller than a round's five sends
    try:
        streamed = asyncio.run(scenario())
    finally:
        inbox_mod.LOOKBACK = old
        notifier.stop()
    assert streamed == 15
    assert max(read) < 10, read  # not 5, 10, 15: each poll starts near the last one's end
