"""What an operator does by hand: send now, cancel or retry one delivery; one-off reminders.

Each call is one write transaction and decides on the delivery's state as locked in it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from duly.core import planner
from duly.core.errors import NotFound, UnknownSubject
from duly.core.model import Reason
from duly.core.planner import Action, Existing, Plan
from duly.engine.service.base import EngineBase
from duly.engine.service.inputs import (
    REMINDER_RULE,
    Conflict,
    ReminderInput,
    _dedupe,
    _validate_reminder,
)
from duly.store.db import Connection, write_transaction

__all__ = ["Operations"]


class Operations(EngineBase):
    """Operator actions on deliveries, and one-off reminders."""

    # ------------------------------------------------------------------ operator actions

    def _one_delivery(self, conn: Connection, did: int) -> dict[str, Any]:
        # locked on PostgreSQL: decided on this state, no claim may slip in between
        row = self.store.delivery_for_decision(conn, did)
        if row is None:
            raise NotFound(f"no delivery {did}", field="id")
        return row

    def send_now(self, did: int) -> None:
        """Make a pending delivery due now (its planned time is kept). Policies still apply."""
        now = self.clock.now()
        with write_transaction(self.db) as conn:
            row = self._one_delivery(conn, did)
            if row["state"] != "pending":
                raise Conflict(f"delivery {did} is {row['state']}, not pending", field="state")
            self.store.make_due_now(conn, did, now)
            self._wake(conn)

    def _stuck(self, conn: Connection, row: Any, now: datetime) -> bool:
        """A row left ``sending`` past its lease (its process died or stalled): an operator
        may cancel or retry it; its last send is recorded as of unknown outcome. Raises
        Conflict while a live process still holds it."""
        if row["state"] != "sending":
            return False
        if row["lease_until"] is not None and row["lease_until"] > now:
            raise Conflict(
                f"delivery {row['id']} is being sent by {row['lease_owner']} (its claim runs "
                f"until {row['lease_until'].isoformat()}); try again after that",
                field="state",
            )
        self.store.record_unknown(conn, row["id"], row["lease_owner"], now)
        return True

    def cancel_delivery(self, did: int) -> None:
        """Cancel a pending delivery (reason ``manual``), or one left ``sending`` past its
        lease."""
        now = self.clock.now()
        with write_transaction(self.db) as conn:
            row = self._one_delivery(conn, did)
            if row["state"] != "pending" and not self._stuck(conn, row, now):
                raise Conflict(f"delivery {did} is {row['state']}, not pending", field="state")
            ex = Existing(
                did,
                planner.Identity("", None, 0, None, None, None),
                "pending",
                None,
                row["planned_at"],
                row["due_at"],
            )
            self.store.apply(conn, [Action("cancel", None, ex, reason=Reason.manual)], now)

    def retry_delivery(self, did: int) -> None:
        """Try a failed, skipped or cancelled delivery again, now (or one left ``sending``
        past its lease). A sent one is never sent twice."""
        now = self.clock.now()
        with write_transaction(self.db) as conn:
            row = self._one_delivery(conn, did)
            if row["state"] not in ("failed", "skipped", "cancelled") and not self._stuck(
                conn, row, now
            ):
                raise Conflict(
                    f"delivery {did} is {row['state']}: only failed, skipped or cancelled "
                    "deliveries can be retried",
                    field="state",
                )
            self.store.reset_for_retry(conn, did, now)
            self._wake(conn)

    # ------------------------------------------------------------------ one-off reminders

    def create_reminder(self, r: ReminderInput) -> int:
        """Plan a one-off reminder: one delivery per recipient and channel."""
        r = _dedupe(r)
        now = self.clock.now()
        _validate_reminder(self.rules, r, now)
        with write_transaction(self.db) as conn:
            if r.subject:
                self._need_subject(conn, r.subject)
            rid = self.store.add_reminder(conn, **_fields(r), now=now)
            self._plan_reminder(conn, rid, r, [], now)
            self._wake(conn)
        return rid

    def update_reminder(self, rid: int, r: ReminderInput) -> None:
        """Replace a reminder that has not been sent: its deliveries are re-planned."""
        r = _dedupe(r)
        now = self.clock.now()
        with write_transaction(self.db) as conn:
            ex = self._reminder_rows(conn, rid)  # 404 / 409 (sent) before validating
            _validate_reminder(self.rules, r, now)
            if r.subject:
                self._need_subject(conn, r.subject)
            self.store.update_reminder(conn, rid, **_fields(r), now=now)
            self._plan_reminder(conn, rid, r, ex, now)
            self._wake(conn)

    def delete_reminder(self, rid: int) -> None:
        """Delete a reminder that has not been sent (its deliveries: cancelled, ``manual``)."""
        now = self.clock.now()
        with write_transaction(self.db) as conn:
            ex = self._reminder_rows(conn, rid)
            self.store.apply(conn, planner.cancel_all(ex, Reason.manual), now)
            self.store.mark_reminder_deleted(conn, rid, now)

    def _reminder_rows(self, conn: Connection, rid: int) -> list[Existing]:
        """The reminder's delivery rows (locked on PostgreSQL, see Store.existing_for);
        refuses (409) once any of them was sent."""
        if not self.store.reminder_exists(conn, rid):
            raise NotFound(f"no reminder {rid}", field="id")
        rows = self.store.existing_for_occurrence(conn, REMINDER_RULE, str(int(rid)))
        if any(x.state in ("sent", "sending") for x in rows):
            raise Conflict(f"reminder {rid} was sent already: it can no longer change", field="id")
        return rows

    def _need_subject(self, conn: Connection, ref: str) -> None:
        kind, sep, key = ref.partition("/")
        rec = self.store.get_subjects(conn, [(kind, key)]).get((kind, key)) if sep else None
        if rec is None or rec.deleted:
            raise UnknownSubject(f"no subject {ref}", field="subject")

    def _plan_reminder(
        self, conn: Connection, rid: int, r: ReminderInput, ex: list[Existing], now: datetime
    ) -> None:
        plan = Plan(scope={REMINDER_RULE})
        plan.addressed[(REMINDER_RULE, None)] = set(r.recipients)
        prio = planner.base_priority_for(r.category)
        for person in r.recipients:
            for ch in r.channels:
                ident = planner.Identity(REMINDER_RULE, None, int(rid), r.subject, person, ch)
                plan.desired.append(
                    planner.Desired(ident, r.send_at, r.send_at, None, r.category, prio)
                )
        actions = planner.reconcile(plan, ex, now)
        self.store.apply(conn, actions, now)


def _fields(r: ReminderInput) -> dict[str, Any]:
    """A reminder's stored fields, as the store's reminder queries take them."""
    return {
        "title": r.title,
        "message": r.message,
        "send_at": r.send_at,
        "channels": r.channels,
        "recipients": r.recipients,
        "subject": r.subject,
        "category": r.category,
    }
