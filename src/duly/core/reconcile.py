"""Reconciliation (docs/reference/rules.md "Planning"): what to change so stored rows match a plan.

``reconcile`` compares a :class:`~duly.core.plantypes.Plan` with the stored rows and says what
to create, move, cancel, skip or plan again; ``cancel_all`` and ``outcome_of`` serve
deletions and the delivery log. Pure: every input is an argument.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from duly.core.model import Outcome, Reason
from duly.core.plantypes import NEVER_SENT, PENDING, Action, Existing, Identity, Plan

__all__ = ["cancel_all", "outcome_of", "reconcile"]

_new = tuple.__new__  # Action(...) with every field given, without its Python __new__


def reconcile(
    plan: Plan,
    existing: Iterable[Existing],
    now: datetime,
    *,
    rule_names: set[str] | None = None,
) -> list[Action]:
    """What to change so the stored rows match ``plan`` (spec: Planning).

    Only rows of rules in ``plan.scope`` are judged against the desired set; a row of a rule
    that no longer exists in the file (``rule_names``) is cancelled if pending. Rows of event
    rules are left to the dispatcher's re-check, except that a recipient removed from its
    role loses its pending rows.
    """
    actions: list[Action] = []
    by_id: dict[Identity, Existing] = {e.identity: e for e in existing}
    if not by_id:  # a new subject: every desired row is created (the loops below, shortened)
        for d in plan.desired:
            if d.skip_reason is not None:
                actions.append(_new(Action, ("create", d, None, "skipped", d.skip_reason)))
            elif d.planned_at < now:
                actions.append(_new(Action, ("create", d, None, "skipped", Reason.past)))
            else:
                actions.append(_new(Action, ("create", d, None, PENDING, None)))
        return actions
    wanted: set[Identity] = set()
    for d in plan.desired:
        wanted.add(d.identity)
        ex = by_id.get(d.identity)
        if ex is None:
            if d.skip_reason is not None:
                actions.append(Action("create", d, state="skipped", reason=d.skip_reason))
            elif d.planned_at < now:
                actions.append(Action("create", d, state="skipped", reason=Reason.past))
            else:
                actions.append(Action("create", d, state=PENDING))
            continue
        if ex.state == PENDING:
            if d.skip_reason is not None:
                actions.append(Action("skip", d, ex, reason=d.skip_reason))
            elif ex.planned_at == d.planned_at:
                # Same planned time: left alone even if overdue (grace decides), and a due
                # time the dispatcher moved (retry, spacing, window at send) is kept. Only a
                # due time the plan itself moves into the future (a hold set or cleared, a
                # new window) moves the row.
                if ex.due_at != d.due_at and d.due_at >= now:
                    actions.append(Action("move", d, ex))
            elif d.planned_at < now:
                actions.append(Action("skip", d, ex, reason=Reason.past))
            else:
                actions.append(Action("move", d, ex))
        elif ex.state in NEVER_SENT and d.skip_reason is None and d.planned_at >= now:
            # An identity never sent whose time lies in the future again is planned again.
            # One that stays unsendable is left as it was: it printed its line already.
            actions.append(Action("replan", d, ex, state=PENDING))
        # sent / failed / set / sending: never touched again
    for ex in by_id.values():
        if ex.state != PENDING or ex.identity in wanted:
            continue
        rule = ex.identity.rule
        chain = plan.fallback.get((rule, ex.identity.step))
        if chain and ex.identity.channel in chain[1:]:
            if ex.identity._replace(channel=chain[0]) in wanted:
                continue  # planned by the dispatcher when an earlier channel could not send
        if rule_names is not None and rule not in rule_names:
            actions.append(Action("cancel", None, ex, reason=Reason.rule_changed))
            continue
        if rule in plan.scope:
            actions.append(Action("cancel", None, ex, reason=_why_unwanted(plan, ex.identity)))
    return actions


def _why_unwanted(plan: Plan, ident: Identity) -> Reason:
    if (ident.rule, ident.step) in plan.unwanted:
        return plan.unwanted[(ident.rule, ident.step)]
    addressed = plan.addressed.get((ident.rule, ident.step))
    if ident.recipient is not None and addressed is not None and ident.recipient not in addressed:
        return Reason.recipient_removed
    return Reason.rule_changed


def cancel_all(existing: Iterable[Existing], reason: Reason) -> list[Action]:
    """Cancel every pending row (subject deleted, recipient deleted)."""
    return [Action("cancel", None, e, reason=reason) for e in existing if e.state == PENDING]


def outcome_of(action: Action) -> tuple[Outcome, Reason | None] | None:
    """The outcome an action records in the log, if any (moves record none)."""
    if action.kind == "cancel":
        return Outcome.cancelled, action.reason
    if action.kind == "skip":
        return Outcome.skipped, action.reason
    if action.kind in ("create", "replan") and action.state == "skipped":
        return Outcome.skipped, action.reason
    return None
