"""What a ``duly simulate`` run prints (docs/reference/simulate.md): outcome rows in spec order.

The recorded outcomes become plain dicts (:func:`collect_rows`), sorted by time, rule,
subject, recipient, channel, step and occurrence so the same files give the same bytes;
:func:`dumps_row` writes one as JSON and :func:`table` writes them for people.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = ["Result", "collect_rows", "dumps_row", "iso", "table"]


@dataclass(slots=True)
class Result:
    """What a run recorded: ``rows`` are the first ``keep`` outcome rows in spec order (all
    of them without ``keep``), ``total`` counts every row, ``counts`` them by outcome and
    reason (``"skipped (past)"``)."""

    rows: list[dict[str, Any]]
    total: int = 0
    counts: dict[str, int] = field(default_factory=dict)


def collect_rows(rows: Iterator[dict[str, Any]], keep: int | None) -> Result:
    counts: dict[str, int] = {}
    total = 0

    def formatted() -> Iterator[dict[str, Any]]:
        nonlocal total
        for r in rows:
            o = _format(r)
            total += 1
            k = o["outcome"] + (f" ({o['reason']})" if o["reason"] else "")
            counts[k] = counts.get(k, 0) + 1
            yield o

    if keep is None:
        kept = sorted(formatted(), key=_sort_key)
    else:  # the same as sorted(...)[:keep], holding only `keep` rows
        kept = heapq.nsmallest(keep, formatted(), key=_sort_key)
    return Result(kept, total, dict(sorted(counts.items())))


def iso(t: datetime | None) -> str | None:
    if t is None:
        return None
    return t.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _format(r: dict[str, Any]) -> dict[str, Any]:
    occ = json.loads(r["occurrence"])
    out: dict[str, Any] = {
        "at": iso(r["at"]),
        "planned": iso(r["planned_at"]),
        "rule": r["rule"],
        "step": r["step"] or None,
        "occurrence": occ,
        "subject": r["subject"] or None,
        "recipient": r["recipient"] or None,
        "channel": r["channel"] or None,
        "category": r["category"],
        "outcome": r["outcome"],
        "reason": r["reason"],
        "attempt": r["attempt"] or 0,
    }
    if r["title"] is not None:
        out["title"] = r["title"]
    if r["outcome"] == "sent":
        out["message"] = r["message_id"]
    if r["outcome"] == "set":
        out["changes"] = r["changes"] or {}
    return out


def _nullable(v: Any) -> tuple[int, Any]:
    if v is None:
        return (0, "")
    if isinstance(v, bool):
        return (1, int(v))
    if isinstance(v, (int, float)):
        return (1, v)
    return (2, str(v))


def _sort_key(o: dict[str, Any]) -> tuple[Any, ...]:
    return (
        o["at"],
        o["rule"],
        _nullable(o["subject"]),
        _nullable(o["recipient"]),
        _nullable(o["channel"]),
        _nullable(o["step"]),
        _nullable(o["occurrence"]),
    )


def dumps_row(o: dict[str, Any]) -> str:
    return json.dumps(o, ensure_ascii=False, separators=(", ", ": "))


def table(rows: Sequence[dict[str, Any]]) -> Iterator[str]:
    """Rows for people, then a summary by outcome and reason."""
    cols = (
        "at",
        "rule",
        "step",
        "occurrence",
        "subject",
        "recipient",
        "channel",
        "outcome",
        "reason",
        "title",
    )
    data = [[("" if o.get(c) is None else str(o.get(c))) for c in cols] for o in rows]
    widths = [max([len(c)] + [len(d[i]) for d in data]) for i, c in enumerate(cols)]
    widths[-1] = min(widths[-1], 60)
    yield "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
    yield "  ".join("-" * w for w in widths)
    for d in data:
        yield "  ".join(v[:w].ljust(w) for v, w in zip(d, widths, strict=True)).rstrip()
    summary: dict[str, int] = {}
    for o in rows:
        k = o["outcome"] + (f" ({o['reason']})" if o["reason"] else "")
        summary[k] = summary.get(k, 0) + 1
    yield ""
    yield f"{len(rows)} outcome{'' if len(rows) == 1 else 's'}: " + ", ".join(
        f"{k}: {n}" for k, n in sorted(summary.items())
    )
