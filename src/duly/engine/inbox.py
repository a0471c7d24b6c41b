"""The inbox (in-app notifications): its reads (the queries are :mod:`duly.store.inbox`)
and an in-process notifier for streams.

An inbox item is a delivery on a channel of type ``inbox`` in state ``sent``: the dispatcher
stores the rendered message in the ``deliveries`` row; ``inbox_reads`` says when the
recipient read it (no row: unread).

Streams (Server-Sent Events, :mod:`duly.api.inbox`) are fed by :class:`InboxNotifier`:

* The stream position is the id of the ``delivery_log`` outcome row that recorded the send
  (append-only, numbered when the send is recorded), not the delivery id: a delivery's id is
  taken when it is *planned*, so a reminder planned weeks ago has a small id when it is sent.
  The SSE ``id:`` of an event is that log id, so ``Last-Event-ID`` resumes exactly.
* One poll thread per process runs **one query for all connected streams**: the sent inbox
  outcomes with a log id above the lowest stream position (minus a small look-back, see
  below), for the connected recipients. It runs every second (``POLL_INTERVAL``), which finds
  sends recorded by *other* processes (several ``duly serve`` or workers on PostgreSQL), and
  at once when :meth:`InboxNotifier.publish` is called by this process's dispatcher after the
  transaction recording a send commits, so a local send reaches its streams in milliseconds.
* Items go to each connection's ``asyncio.Queue`` through ``loop.call_soon_threadsafe``.
* On PostgreSQL, two transactions can commit their log rows out of id order; the query looks
  back ``LOOKBACK`` log ids below the position and each connection drops delivery ids it has
  already streamed, so a late commit is still delivered, once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from duly.store import inbox as q
from duly.store.db import Engine, write_transaction

__all__ = ["InboxConnection", "InboxNotifier", "InboxStore", "decode_cursor", "encode_cursor"]

log = logging.getLogger("duly.inbox")

POLL_INTERVAL = 1.0  # seconds between polls for sends recorded by other processes
LOOKBACK = 200  # log ids re-read below a stream's position (out-of-order commits)
SEEN = 2000  # delivery ids a connection remembers, to stream each item once
RESUME_LIMIT = 500  # items replayed at most on Last-Event-ID
_IN_LIMIT = 500  # above this many connected recipients, filter them in Python


def inbox_channel_names(rules: Any) -> tuple[str, ...]:
    """The channel names of type ``inbox`` in a rule file (``inbox`` itself if none)."""
    names = tuple(
        sorted(n for n, c in (getattr(rules, "channels", None) or {}).items() if c.type == "inbox")
    )
    return names or ("inbox",)


def encode_cursor(sent_at: datetime, delivery_id: int) -> str:
    raw = f"{sent_at.isoformat()}|{delivery_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """Raises ValueError for a cursor this module did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, ident = raw.partition("|")
        when = datetime.fromisoformat(at)
        if when.tzinfo is None:
            raise ValueError("naive")
        return when, int(ident)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ValueError("not a cursor from this API") from exc


def item_of(r: dict[str, Any]) -> dict[str, Any]:
    """The JSON-ready item of an item read by :mod:`duly.store.inbox`."""
    return {
        "id": r["id"],
        "title": r["title"],
        "text": r["body_text"],
        "html": r["body_html"],
        "sent_at": r["sent_at"].isoformat().replace("+00:00", "Z") if r["sent_at"] else None,
        "read_at": r["read_at"].isoformat().replace("+00:00", "Z") if r["read_at"] else None,
        "rule": r["rule"],
        "subject": r["subject"] or None,
        "category": r["category"],
    }


class InboxStore:
    """Queries over the inbox items of the channels named ``channels``."""

    def __init__(self, db: Engine, channels: Iterable[str] = ("inbox",)) -> None:
        self.db = db
        self.channels = tuple(channels)

    def list(
        self,
        recipient: str,
        *,
        unread: bool = False,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Items newest first (by sent_at, then id) and the cursor of the next page."""
        before = decode_cursor(cursor) if cursor else None
        with self.db.connect() as conn:
            rows = q.inbox_page(
                conn, self.channels, recipient, unread=unread, before=before, limit=limit + 1
            )
        more = len(rows) > limit
        rows = rows[:limit]
        nxt = encode_cursor(rows[-1]["sent_at"], rows[-1]["id"]) if more and rows else None
        return [item_of(r) for r in rows], nxt

    def unread_count(self, recipient: str) -> int:
        with self.db.connect() as conn:
            return q.unread_inbox_count(conn, self.channels, recipient)

    def get(self, recipient: str, delivery_id: int) -> dict[str, Any] | None:
        with self.db.connect() as conn:
            r = q.inbox_item(conn, self.channels, recipient, delivery_id)
        return item_of(r) if r is not None else None

    def mark_read(self, recipient: str, delivery_id: int, now: datetime) -> dict[str, Any] | None:
        """Mark one item read (idempotent: the first read time is kept); None when it is not
        an item of this recipient's inbox."""
        with write_transaction(self.db) as conn:
            r = q.mark_inbox_item_read(conn, self.channels, recipient, delivery_id, now)
        return item_of(r) if r is not None else None

    def position(self) -> int:
        """The current end of the stream: the highest delivery_log id."""
        with self.db.connect() as conn:
            return q.inbox_position(conn)

    def sent_since(
        self, after: int, recipients: Iterable[str] | None, limit: int = 5000
    ) -> list[tuple[int, str, dict[str, Any]]]:
        """(log id, recipient, item) of the sends recorded after log id ``after``, oldest
        first, for ``recipients`` (None: everyone)."""
        with self.db.connect() as conn:
            rows = q.inbox_sends_since(conn, self.channels, after, recipients, limit)
        return [(r["log_id"], r["recipient"], item_of(r)) for r in rows]


@dataclass(eq=False)
class InboxConnection:
    """One open stream: its recipient, its queue (on its event loop) and its position."""

    recipient: str
    loop: asyncio.AbstractEventLoop
    position: int
    # nothing at or below the position it started from (the look-back stays above it)
    floor: int = 0
    queue: asyncio.Queue[tuple[int, dict[str, Any]]] = field(default_factory=asyncio.Queue)
    _seen: set[int] = field(default_factory=set)
    _order: deque[int] = field(default_factory=deque)

    def offer(self, log_id: int, item: dict[str, Any], batch: _Handoff | None = None) -> bool:
        """Called on the poll thread: queue the item unless already streamed (through
        ``batch`` when given: see :class:`_Handoff`)."""
        ident = int(item["id"])
        if log_id <= self.floor or ident in self._seen:
            return False
        self._seen.add(ident)
        self._order.append(ident)
        if len(self._order) > SEEN:
            self._seen.discard(self._order.popleft())
        self.position = max(self.position, log_id)
        if batch is not None:
            batch.add(self, (log_id, item))
        else:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (log_id, item))
        return True


class _Handoff:
    """Items for streams, handed to each event loop in one ``call_soon_threadsafe`` per
    poll rather than one per item: each call wakes the loop through a socket write, and
    every such system call gives up the GIL, which a busy dispatcher thread in the same
    process then holds for a switch interval (5 ms) before the poll thread gets it back."""

    def __init__(self) -> None:
        self.by_loop: dict[asyncio.AbstractEventLoop, list[tuple[InboxConnection, Any]]] = {}

    def add(self, conn: InboxConnection, entry: tuple[int, dict[str, Any]]) -> None:
        self.by_loop.setdefault(conn.loop, []).append((conn, entry))

    def flush(self) -> None:
        for loop, items in self.by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # that loop is closed: its streams are gone
                pass
        self.by_loop = {}


def _put_all(items: list[tuple[InboxConnection, Any]]) -> None:
    for conn, entry in items:
        conn.queue.put_nowait(entry)


class InboxNotifier:
    """Fans sent inbox items out to the open streams of one process (see the module doc)."""

    def __init__(self, store: InboxStore, *, interval: float = POLL_INTERVAL) -> None:
        self.store = store
        self.interval = interval
        self._lock = threading.Lock()
        self._conns: dict[str, set[InboxConnection]] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- streams

    def connect(
        self,
        recipient: str,
        last_event_id: int | None = None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> InboxConnection:
        """Register a stream whose queue is read on ``loop`` (default: the running one). With ``last_event_id`` the items
        recorded after it are replayed first; otherwise only new items are streamed."""
        start = self.store.position() if last_event_id is None else last_event_id
        conn = InboxConnection(recipient, loop or asyncio.get_running_loop(), start, start)
        with self._lock:
            self._conns.setdefault(recipient, set()).add(conn)
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._run, name="duly-inbox-notifier", daemon=True
                )
                self._thread.start()
        if last_event_id is not None:
            for log_id, _, item in self.store.sent_since(
                last_event_id, [recipient], limit=RESUME_LIMIT
            ):
                conn.offer(log_id, item)
        return conn

    def disconnect(self, conn: InboxConnection) -> None:
        with self._lock:
            conns = self._conns.get(conn.recipient)
            if conns is not None:
                conns.discard(conn)
                if not conns:
                    del self._conns[conn.recipient]

    def connected(self) -> int:
        with self._lock:
            return sum(len(c) for c in self._conns.values())

    # -------------------------------------------------------------- feeding

    def publish(self, recipient: str | None = None, item: Any = None) -> None:
        """A send was recorded (its transaction committed): poll now rather than within
        ``interval``. Thread-safe; costs nothing when no stream is open. The item itself is
        read back by the poll, which gives it its stream position."""
        if recipient is None or recipient in self._conns:
            self._wake.set()

    def on_outcome(self, row: Any, logrow: dict[str, Any]) -> None:
        """A Dispatcher ``on_outcome`` callback: publish the sends on inbox channels."""
        ident = row.identity
        if logrow.get("outcome") == "sent" and ident.channel in self.store.channels:
            self.publish(ident.recipient)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def poll_once(self) -> int:
        """One query for every open stream; returns the number of items queued."""
        with self._lock:
            snapshot = {r: list(c) for r, c in self._conns.items() if c}
        if not snapshot:
            return 0
        low = min(c.position for conns in snapshot.values() for c in conns)
        recipients = list(snapshot) if len(snapshot) <= _IN_LIMIT else None
        queued = 0
        rows = self.store.sent_since(max(0, low - LOOKBACK), recipients)
        batch = _Handoff()
        for log_id, recipient, item in rows:
            for conn in snapshot.get(recipient, ()):
                if log_id > conn.position - LOOKBACK and conn.offer(log_id, item, batch):
                    queued += 1
        batch.flush()
        if rows:
            # Every stream of the snapshot has now been offered all it had up to the last
            # log id read (oldest first): it moves there even if none of it was its own, so
            # the next poll starts from there (less the look-back), not from where the
            # quietest stream connected.
            high = rows[-1][0]
            for conns in snapshot.values():
                for conn in conns:
                    if conn.position < high:
                        conn.position = high
        return queued

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.poll_once()
            except Exception:  # the database may be away for a moment: poll again
                log.warning("inbox poll failed", exc_info=True)
