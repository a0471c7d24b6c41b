"""Writing the demo's fabricated history straight into the tables (``duly demo``).

The demo seeds past deliveries, their attempts and outcomes, and a suppression, so the
dashboard has something to show; they bypass planning (see :func:`duly.demo.seed_history`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert
from sqlalchemy.engine import Connection

from duly.store.search import subject_search_text
from duly.store.tables import deliveries, delivery_log, subjects, suppressions

__all__ = ["write_history"]


def write_history(
    conn: Connection,
    subject_rows: Sequence[dict[str, Any]],
    items: Sequence[tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any] | None]],
) -> None:
    """Insert ``subject_rows`` into ``subjects`` as given, then each item in order: a
    delivery row (every column given), its ``delivery_log`` rows and, if any, a
    suppression — the last two get the new delivery's id as ``delivery_id``. Not
    idempotent: the caller writes it once, into a database without subjects."""
    for s in subject_rows:
        text = subject_search_text(s["kind"], s["key"], s["attributes"], s["recipients"])
        conn.execute(insert(subjects).values(**s, search=text))
    for values, log, suppression in items:
        did = conn.execute(insert(deliveries).values(**values)).inserted_primary_key[0]
        conn.execute(insert(delivery_log), [{**row, "delivery_id": did} for row in log])
        if suppression is not None:
            conn.execute(insert(suppressions).values(**suppression, delivery_id=did))
