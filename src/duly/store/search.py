"""The header search and the look-ups that take what people type (a name without its
accent, a key without its kind).

Subjects and recipients carry a ``search`` column: their words, normalized here in Python
(:func:`normalize`: accents stripped, case folded, punctuation made spaces), so SQLite and
PostgreSQL compare the same text and a search is ``search LIKE '%word%'`` for each word
typed. It is written with the row (``store/subjects.py``, ``store/recipients.py``, the
demo) and backfilled by migration 0012. On PostgreSQL a trigram index (``pg_trgm``) serves
those LIKEs; on SQLite the b-tree on the column lets a search scan that narrow index
instead of the table.

A subject's text holds its kind, key and the text and number values of its top-level
attributes (so the attributes a rule file shows as a subject's title and columns are always
found, whatever the rule file says today), then its recipients as ``|ROLE:ID|`` (both
percent-encoded, so ``:`` and ``|`` only ever separate): what a recipient's page reads to
list their subjects. A deleted subject's text is NULL: no search finds it.

Everything here is bounded: the text typed (:data:`MAX_QUERY` characters, :data:`MAX_WORDS`
words), the rows a search reads (:data:`CANDIDATES`) and the rows it returns.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from duly.store.tables import deliveries, recipients, subjects

__all__ = [
    "CANDIDATES",
    "exact_matches",
    "MAX_QUERY",
    "MAX_WORDS",
    "find_recipients",
    "find_subjects_by_key",
    "normalize",
    "recipient_search_text",
    "search_all",
    "subject_details",
    "subject_search_text",
    "subjects_of_recipient",
]

MAX_QUERY = 100  # characters of a search; more is cut
MAX_WORDS = 6  # words of a search; more are ignored
MAX_TEXT = 1000  # characters of a row's normalized words
MAX_VALUE = 200  # characters taken from one attribute value
MAX_REFS = 50  # recipients (role, id) written into a subject's text
CANDIDATES = 200  # rows one search reads per type, before ranking
MAX_ID = 2**62

# letters that do not decompose into a base letter and an accent
_FOLD = str.maketrans({"ø": "o", "ł": "l", "đ": "d", "ħ": "h", "ı": "i", "þ": "th",
                       "æ": "ae", "œ": "oe", "ŀ": "l"})  # fmt: skip
_WORD = re.compile(r"[^\W_]+")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ][\d:.]+)?(Z|[+-]\d{2}:?\d{2})?$")


# --------------------------------------------------------------------------- text


def normalize(text: str) -> str:
    """``text`` as the search compares it: accents stripped ("Díaz" → "diaz"), case folded
    ("Straße" → "strasse"), every run of characters other than letters and digits one
    space, no space at either end. Pure Python, so both databases get the same text."""
    if text.isascii():  # ids, keys, emails: nothing to decompose
        return " ".join(_WORD.findall(text.lower()))
    # names recur (ranking normalizes each found row's): short texts are cached
    return _normalize_short(text) if len(text) <= 200 else _normalize_unicode(text)


def _normalize_unicode(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    folded = bare.casefold().translate(_FOLD)
    return " ".join(_WORD.findall(folded))


_normalize_short = lru_cache(maxsize=4096)(_normalize_unicode)


def _values(attributes: Mapping[str, Any]) -> Iterable[str]:
    for value in attributes.values():
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            yield str(value)
        elif isinstance(value, str) and not _ISO_DATE.match(value):
            yield value[:MAX_VALUE]


def subject_search_text(
    kind: str, key: str, attributes: Mapping[str, Any], roles: Mapping[str, Iterable[str]]
) -> str:
    """The ``search`` column of a live subject: its normalized words (at most
    :data:`MAX_TEXT` characters), then ``|ROLE:ID|`` for each recipient (at most
    :data:`MAX_REFS`)."""
    words = normalize(" ".join([kind, key, *_values(attributes)]))[:MAX_TEXT]
    refs = [
        f"{quote(str(role), safe='')}:{quote(str(rid), safe='')}"
        for role, ids in roles.items()
        for rid in ([ids] if isinstance(ids, str) else ids)
    ][:MAX_REFS]
    return f"{words} |{'|'.join(refs)}|" if refs else words


def recipient_search_text(rid: str, name: str | None, email: str | None, phone: str | None) -> str:
    """The ``search`` column of a recipient: the normalized words of its id, name, email
    and phone, and the phone's digits run together (so "+44 7700 900123" and
    "447700900123" both find it); at most :data:`MAX_TEXT` characters."""
    text = normalize(" ".join(v for v in (rid, name, email, phone) if v))
    digits = "".join(c for c in phone or "" if c.isdigit())
    if digits:
        text = f"{text} {digits}"
    return text[:MAX_TEXT]


def _words(query: str) -> list[str]:
    return normalize(query[:MAX_QUERY]).split()[:MAX_WORDS]


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _matching(column: Any, words: list[str]) -> list[Any]:
    # the words are letters and digits only (normalize): nothing to escape
    return [column.like(f"%{w}%") for w in words]


# --------------------------------------------------------------------------- subjects

_SUBJECT_COLS = (subjects.c.id, subjects.c.kind, subjects.c.key, subjects.c.attributes,
                 subjects.c.recipients, subjects.c.updated_at)  # fmt: skip


def _subject(r: Any) -> dict[str, Any]:
    return {
        "id": int(r["id"]),
        "kind": r["kind"],
        "key": r["key"],
        "attributes": dict(r["attributes"] or {}),
        "recipients": {
            k: list(v) if isinstance(v, list) else [v] for k, v in (r["recipients"] or {}).items()
        },
        "updated_at": r["updated_at"],
    }


def _exact_subjects(conn: Connection, text: str, limit: int) -> list[dict[str, Any]]:
    """Live subjects whose key is ``text`` as typed, or whose KIND/KEY it is (the key index
    and the unique (kind, key) index)."""
    conds = [subjects.c.key == text]
    kind, sep, key = text.partition("/")
    if sep and kind and key:
        conds.append(sa.and_(subjects.c.kind == kind, subjects.c.key == key))
    q = (
        sa.select(*_SUBJECT_COLS)
        .where(subjects.c.search.is_not(None), sa.or_(*conds))
        .order_by(subjects.c.kind)
        .limit(limit)
    )
    return [_subject(r) for r in conn.execute(q).mappings()]


def find_subjects_by_key(conn: Connection, text: str, limit: int = 20) -> list[dict[str, Any]]:
    """Live subjects whose key is ``text`` (as typed, or "KIND/KEY"), else whose key reads
    the same once normalized ("inv-1004" finds "INV-1004"): at most ``limit``, by kind.
    Each as ``id``, ``kind``, ``key``, ``attributes``, ``recipients`` (role → ids),
    ``updated_at``. Reads the key index, then (when that found none) one search."""
    text = text.strip()[:301]
    if not text:
        return []
    found = _exact_subjects(conn, text, limit)
    if found:
        return found
    wanted = normalize(text[:MAX_QUERY])
    hits = [h for h in _subject_candidates(conn, _words(text)) if normalize(h["key"]) == wanted]
    return _full_subjects(conn, sorted(hits, key=lambda h: (h["kind"], h["key"]))[:limit])


def _subject_candidates(conn: Connection, words: list[str]) -> list[dict[str, Any]]:
    """``id``, ``kind``, ``key`` of the first :data:`CANDIDATES` live subjects whose text
    has every word (no attributes read: ranking needs only the key). The scan reads only
    ids, so SQLite scans the narrow search index, not the table."""
    if not words:
        return []
    ids = (
        conn.execute(
            sa.select(subjects.c.id).where(*_matching(subjects.c.search, words)).limit(CANDIDATES)
        )
        .scalars()
        .all()
    )
    if not ids:
        return []
    q = sa.select(subjects.c.id, subjects.c.kind, subjects.c.key).where(subjects.c.id.in_(ids))
    return [dict(r) for r in conn.execute(q).mappings()]


def _full_subjects(conn: Connection, hits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of ``hits`` (``id`` …) in full, in the same order."""
    if not hits:
        return []
    q = sa.select(*_SUBJECT_COLS).where(subjects.c.id.in_([h["id"] for h in hits]))
    rows = {int(r["id"]): _subject(r) for r in conn.execute(q).mappings()}
    return [{**rows[h["id"]], **h} for h in hits if h["id"] in rows]


def _rank_subject(r: dict[str, Any], raw: str, wanted: str) -> int:
    key = normalize(r["key"])
    if r["key"] == raw or f"{r['kind']}/{r['key']}" == raw or key == wanted:
        return 0
    return 1 if key.startswith(wanted) else 2


def subjects_of_recipient(
    conn: Connection, rid: str, limit: int = 50
) -> tuple[list[dict[str, Any]], bool]:
    """The live subjects that name recipient ``rid`` in a role: the newest ``limit`` (by
    id) among the first :data:`CANDIDATES` found, each with ``roles`` (the roles it holds
    there, in order) besides the fields of :func:`find_subjects_by_key`; and whether more
    were found than returned."""
    pattern = f"%:{_escape_like(quote(rid, safe=''))}|%"
    ids = conn.execute(
        sa.select(subjects.c.id)
        .where(subjects.c.search.like(pattern, escape="\\"))
        .limit(CANDIDATES)
    ).scalars().all()  # fmt: skip
    top = sorted(ids, reverse=True)[:limit]
    if not top:
        return [], False
    q = sa.select(*_SUBJECT_COLS).where(subjects.c.id.in_(top)).order_by(subjects.c.id.desc())
    out = []
    for r in conn.execute(q).mappings():
        s = _subject(r)
        s["roles"] = [role for role, who in s["recipients"].items() if rid in who]
        if s["roles"]:  # the text said so; the row confirms it
            out.append(s)
    return out, len(ids) > limit


# --------------------------------------------------------------------------- recipients

_RECIPIENT_COLS = (recipients.c.id, recipients.c.name, recipients.c.email, recipients.c.phone,
                   recipients.c.timezone)  # fmt: skip


def _recipient_exact(r: Mapping[str, Any], raw: str, wanted: str) -> bool:
    if r["id"] == raw:
        return True
    return any(v and normalize(v) == wanted for v in (r["id"], r["name"], r["email"], r["phone"]))


def find_recipients(
    conn: Connection, text: str, limit: int = 20
) -> tuple[list[dict[str, Any]], bool]:
    """Recipients matching ``text`` as a person types it: every word found (accents and case
    aside) in their id, name, email or phone. Those matching exactly (the id as typed, or a
    whole id, name, email or phone read the same once normalized) come first, flagged
    ``exact``; then by name and id. At most ``limit`` (``id``, ``name``, ``email``,
    ``phone``, ``timezone``, ``exact``) from the first :data:`CANDIDATES` found, and whether
    more matched than returned."""
    raw = text.strip()[:200]
    words = _words(raw)
    wanted = " ".join(words)
    rows: dict[str, dict[str, Any]] = {}
    if raw:
        q = sa.select(*_RECIPIENT_COLS).where(recipients.c.id == raw)
        rows.update((r["id"], dict(r)) for r in conn.execute(q).mappings())
    if words:
        # the scan reads only row ids (SQLite: the rowid the search index holds), so it
        # reads the narrow index, not the table; then the rows found, by id
        sqlite = conn.dialect.name == "sqlite"
        rowid = sa.literal_column("rowid") if sqlite else recipients.c.id
        scan = sa.select(rowid).where(*_matching(recipients.c.search, words))
        found = conn.execute(scan.limit(CANDIDATES + 1)).scalars().all()
        more = len(found) > CANDIDATES
        if found:
            q = sa.select(*_RECIPIENT_COLS).where(rowid.in_(found[:CANDIDATES]))
            rows.update((r["id"], dict(r)) for r in conn.execute(q).mappings())
    else:
        more = False
    for r in rows.values():
        r["exact"] = _recipient_exact(r, raw, wanted)
    ranked = sorted(
        rows.values(), key=lambda r: (not r["exact"], normalize(r["name"] or ""), r["id"])
    )
    return ranked[:limit], more or len(ranked) > limit


# --------------------------------------------------------------------------- everything


_DELIVERY_COLS = (
    deliveries.c.id, deliveries.c.rule, deliveries.c.step, deliveries.c.subject,
    deliveries.c.recipient, deliveries.c.channel, deliveries.c.state, deliveries.c.reason,
    deliveries.c.due_at, deliveries.c.sent_at, deliveries.c.title, deliveries.c.message_id,
)  # fmt: skip


def _deliveries(
    conn: Connection, raw: str, refs: list[str], limit: int
) -> tuple[list[dict[str, Any]], set[int]]:
    """Deliveries by id or Message-ID (exact: their ids returned too), then those of the
    subjects ``refs``, newest first."""
    c = deliveries.c
    exact: dict[int, dict[str, Any]] = {}
    number = raw.lstrip("#")
    if number.isdigit() and 0 < int(number) <= MAX_ID:
        for r in conn.execute(sa.select(*_DELIVERY_COLS).where(c.id == int(number))).mappings():
            exact[int(r["id"])] = dict(r)
    mid = raw.strip("<>")
    if mid and len(raw) <= 200:
        forms = {raw, mid, f"<{mid}>"}
        q = sa.select(*_DELIVERY_COLS).where(c.message_id.in_(sorted(forms))).limit(limit)
        for r in conn.execute(q).mappings():
            exact[int(r["id"])] = dict(r)
    rows = list(exact.values())
    if refs:
        q = (
            sa.select(*_DELIVERY_COLS)
            .where(c.subject.in_(refs))
            .order_by(c.id.desc())
            .limit(limit + 1)
        )
        rows += [dict(r) for r in conn.execute(q).mappings() if int(r["id"]) not in exact]
    return rows, set(exact)


def search_all(conn: Connection, text: str, limit: int = 20) -> dict[str, Any]:
    """One search over subjects, recipients and deliveries (the header's box).

    ``text`` is cut to :data:`MAX_QUERY` characters and :data:`MAX_WORDS` words. Subjects:
    every word in its kind, key, attribute values or recipient ids; recipients: see
    :func:`find_recipients`; deliveries: by id, by Message-ID, and those of the subjects
    whose key is what was typed. Returns ``subjects``, ``recipients``, ``deliveries``
    (at most ``limit`` each; exact matches first, each row's ``exact`` says), ``more``
    (type → whether more matched than shown) and ``exact`` (how many exact matches in
    all: the page opens the one when there is one)."""
    raw = text.strip()[:MAX_QUERY]
    words = _words(raw)
    wanted = " ".join(words)
    by_id: dict[int, dict[str, Any]] = {}
    if raw:
        by_id.update((r["id"], r) for r in _exact_subjects(conn, raw, limit))
    candidates = _subject_candidates(conn, words)
    for r in candidates:
        by_id.setdefault(r["id"], r)
    ranked = sorted(
        by_id.values(), key=lambda r: (_rank_subject(r, raw, wanted), r["kind"], r["key"])
    )
    subs = _full_subjects(
        conn, [{**r, "exact": _rank_subject(r, raw, wanted) == 0} for r in ranked[:limit]]
    )
    exact_subjects = sum(1 for r in by_id.values() if _rank_subject(r, raw, wanted) == 0)
    people, more_people = find_recipients(conn, raw, limit)
    refs = [f"{r['kind']}/{r['key']}" for r in subs if r["exact"]][:20]
    dels, exact_dels = _deliveries(conn, raw, refs, limit) if raw else ([], set())
    for d in dels:
        d["exact"] = int(d["id"]) in exact_dels
    exact = exact_subjects + sum(1 for r in people if r["exact"])
    return {
        "subjects": subs,
        "recipients": people,
        "deliveries": dels[:limit],
        "more": {
            "subjects": len(by_id) > limit or len(candidates) >= CANDIDATES,
            "recipients": more_people,
            "deliveries": len(dels) > limit,
        },
        "exact": exact + len(exact_dels),
    }


def subject_details(conn: Connection, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """The ``attributes`` and ``recipients`` (role → ids) of the subjects ``ids`` (at most
    500 looked up; unknown ids absent), for the titles and columns a list shows. One
    query."""
    wanted = sorted(set(ids))[:500]
    if not wanted:
        return {}
    q = sa.select(*_SUBJECT_COLS).where(subjects.c.id.in_(wanted))
    return {int(r["id"]): _subject(r) for r in conn.execute(q).mappings()}


def exact_matches(conn: Connection, text: str, limit: int = 2) -> list[tuple[str, str]]:
    """What ``text`` names exactly, found through indexes only (no scan): a live subject
    by key or KIND/KEY (``("subject", "KIND/KEY")``), a recipient by id
    (``("recipient", id)``), a delivery by number or Message-ID (``("delivery", "id")``).
    At most ``limit``: the search page opens the one match at once, without searching
    further, when there is exactly one."""
    raw = text.strip()[:MAX_QUERY]
    if not raw:
        return []
    out = [("subject", f"{s['kind']}/{s['key']}") for s in _exact_subjects(conn, raw, limit)]
    q = sa.select(recipients.c.id).where(recipients.c.id == raw)
    out += [("recipient", rid) for rid in conn.execute(q).scalars()]
    _, exact = _deliveries(conn, raw, [], limit)
    out += [("delivery", str(d)) for d in sorted(exact)]
    return out[:limit]
