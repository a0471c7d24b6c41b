"""A row without recipient: its step's (or event or schedule rule's) ``set`` changes to the
subject and its ``webhook`` action, applied in one transaction with the row's outcome, and
undone when another process retook the row meanwhile (its lease ran out). A failure stays
with that row: it waits a minute and is tried again.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from duly.core import planner
from duly.core.model import Reason, WebhookAction
from duly.delivery import webhooks
from duly.engine.dispatch.work import _Work
from duly.store.db import write_transaction

log = logging.getLogger("duly.dispatcher")


class ActionsMixin:
    """``Dispatcher``'s ``set`` and ``webhook`` actions (mixed into it)."""

    def _apply_set_guarded(self, w: _Work, now: datetime) -> None:
        try:
            self._apply_set(w, now)
        except _LeaseLost:
            self.stats.lost_lease += 1
            log.error(
                "delivery %s (rule %s, subject %s): set not applied: another process retook "
                "the row after this one's lease ran out",
                w.row.id,
                w.row.identity.rule,
                w.row.identity.subject or "-",
            )
        except Exception as exc:
            log.exception("delivery %s: applying its set/webhook actions failed", w.row.id)
            self._failed("set")
            w.logs.clear()
            self._defer(w, now, now + timedelta(seconds=60), last_error=f"internal error: {exc!r}")
            try:
                self._record([w], now)
            except Exception:  # its lease runs out; another cycle retakes it
                log.exception("delivery %s: could not record the failure", w.row.id)

    def _apply_set(self, w: _Work, now: datetime) -> None:
        """A row without recipient: the step's (or event / schedule rule's) `set` and
        `webhook` actions, in one transaction with its outcome."""
        changes = dict(w.row.changes or {})
        ref = w.row.identity.subject or ""
        action = w.step.webhook if w.step is not None else (w.rule.webhook if w.rule else None)
        with write_transaction(self.engine.db) as conn:
            # nothing to change (a webhook-only step, a schedule rule): _decide saw the subject
            ok = self.engine.apply_set(conn, ref, changes, now) if (ref and changes) else True
            if ok:
                self._final(w, now, "set", None, changes=changes)
                if action is not None:
                    self._emit_action(conn, w, action, changes, now)
            else:
                self._final(w, now, "cancelled", Reason.subject_deleted)
            held = self.store.finish(conn, [w.update], self.owner)
            if not held:  # another process retook the row: undo this one's changes
                raise _LeaseLost(w.row.id)
            self.store.log(conn, w.logs)
        self.stats.set += 1
        self._after_record([w])

    def _emit_action(
        self, conn: Any, w: _Work, action: WebhookAction, changes: dict[str, Any], now: datetime
    ) -> None:
        """Queue a `webhook: {url, body}` action; its body templates see the subject as the
        step's `set` left it."""
        subject = None
        if w.subject is not None:
            subject = planner.subject_dict(w.subject)
            subject["attributes"] = {**w.subject.attributes, **changes}
            subject["revision"] = w.subject.revision + (1 if changes else 0)
        ident = w.row.identity
        context = {
            "subject": subject,
            "event": w.event,
            "rule": {"name": ident.rule, "step": ident.step, "occurrence": ident.occurrence},
        }
        secret_env = webhooks.action_secret_env(self.engine.rules, action.url)
        webhooks.emit_action(
            conn,
            action.url,
            action.body,
            secret_env,
            now,
            context=context,
            limits=self.engine.rules.render,
        )


class _LeaseLost(Exception):
    """A row this process claimed was retaken by another before its outcome was written."""
