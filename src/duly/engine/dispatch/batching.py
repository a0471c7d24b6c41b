"""spec: Batch. The deliveries of a batched step to one recipient on one channel go out as
one message: the rows due within the batch window of the first are claimed with it, one
message is rendered for the group (its template gets ``subjects``), and every member gets
that message's outcome on its own row.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from duly.core import planner
from duly.engine.dispatch.work import _Work
from duly.store.db import write_transaction
from duly.store.store import DeliveryRow


class BatchingMixin:
    """``Dispatcher``'s batches (mixed into it)."""

    def _claim_batch_mates(self, rows: list[DeliveryRow], now: datetime) -> list[DeliveryRow]:
        """spec: Batch. For each claimed row of a batched step, also take the rows of the
        same step, recipient and channel due before the first + the window (they go out
        early, in the same message)."""
        rf = self.engine.rules
        firsts: dict[tuple[str, str, str, str], DeliveryRow] = {}
        for r in rows:
            rule = rf.rule(r.identity.rule)
            if rule is None or r.identity.recipient is None:
                continue
            step = rule.step(r.identity.step) if r.identity.step else None
            if planner.effective(step, rule, "batch") is None:
                continue
            i = r.identity
            key = (i.rule, i.step or "", i.recipient or "", i.channel or "")
            if key not in firsts or r.due_at < firsts[key].due_at:
                firsts[key] = r
        if not firsts:
            return []
        extra: list[DeliveryRow] = []
        with write_transaction(self.engine.db) as conn:
            for first in firsts.values():
                rule = rf.rule(first.identity.rule)
                assert rule is not None
                step = rule.step(first.identity.step) if first.identity.step else None
                batch = planner.effective(step, rule, "batch")
                until = first.due_at + timedelta(seconds=batch.window.total_seconds_approx())
                extra += self.store.claim_batch(
                    conn, first.identity, until, now, self.owner, self.lease
                )
        return extra

    def _render_batch(self, group: list[_Work], now: datetime) -> bool:
        """Render one message for the group, on its first (earliest) row; the template gets
        ``subjects``, the list. Returns False when rendering failed (each row then records
        the render error)."""
        lead = group[0]
        extra = {
            "subjects": [planner.subject_dict(w.subject) for w in group if w.subject is not None],
            "batch": {"size": len(group)},
        }
        ok = (
            self._render(lead, now, lead.address or "", lead.tzname or "UTC", extra=extra) == "send"
        )
        if not ok:
            self._copy_outcome(lead, group[1:])
            return False
        assert lead.message is not None
        lead.message.headers["X-Duly-Batch-Size"] = str(len(group))
        return True

    def _copy_outcome(self, lead: _Work, others: list[_Work]) -> None:
        """Deliveries sent together share the message, its id and its outcome; each keeps
        its own row."""
        for w in others:
            w.update = {**lead.update, "_id": w.row.id}
            w.logs = [
                {**lg, "delivery_id": w.row.id}
                | ({"planned_at": w.row.planned_at} if lg.get("kind") == "outcome" else {})
                for lg in lead.logs
            ]
