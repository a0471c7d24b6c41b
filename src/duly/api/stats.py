"""/v1/stats: what happened in a period (outcomes by outcome, reason, rule, channel and
day) and what is waiting now.

The counting is :func:`duly.store.stats.period_stats` (grouped SQL over the log's index
range, fast with millions of rows); this module checks the period and shapes the answer.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from duly.api.errors import ApiError
from duly.api.schemas import ErrorOut, Instant  # ErrorOut: the one error shape, one name
from duly.store.receipts import receipt_counts
from duly.store.stats import period_stats  # the counting (tests import it from here too)

router = APIRouter(prefix="/v1", tags=["stats"])

DEFAULT_PERIOD = timedelta(days=7)
MAX_PERIOD = timedelta(days=400)


# --------------------------------------------------------------------------- schemas


class Counts(BaseModel):
    total: int
    outcomes: dict[str, int] = Field(
        description="count by outcome (sent, failed, skipped, cancelled, set)",
        examples=[{"sent": 41, "skipped": 2}],
    )


class RuleCounts(Counts):
    rule: str


class ChannelCounts(Counts):
    channel: str | None = Field(description="None for rows with no channel (`set` actions)")


class DayCounts(Counts):
    day: date = Field(description="a UTC date")


class ReasonCount(BaseModel):
    outcome: str
    reason: str
    count: int


class StatsOut(BaseModel):
    from_: datetime = Field(alias="from", description="start of the period (included)")
    to: datetime = Field(description="end of the period (excluded)")
    total: int = Field(description="outcomes recorded in the period")
    by_outcome: dict[str, int]
    by_reason: list[ReasonCount] = Field(
        description="outcomes that have a reason (skipped: no_consent, failed: "
        "retries_exhausted, …), most frequent first"
    )
    by_rule: list[RuleCounts] = Field(description="most outcomes first")
    by_channel: list[ChannelCounts] = Field(description="most outcomes first")
    by_day: list[DayCounts] = Field(description="every UTC day of the period, oldest first")
    pending: int = Field(description="now (whatever the period): planned and not yet sent")
    sending: int = Field(description="now: claimed by a dispatcher, being sent")
    overdue: int = Field(description="now: pending and already due")
    failed: int = Field(description="now: deliveries whose last outcome is failed")
    receipts: dict[str, int] = Field(
        default_factory=dict,
        description="provider reports received in the period, by status (accepted, "
        "delivered, read, undelivered, bounced, complained), and unmatched: those for a "
        "message id no delivery has",
    )


# --------------------------------------------------------------------------- route


@router.get(
    "/stats",
    response_model=StatsOut,
    response_model_by_alias=True,
    responses={422: {"model": ErrorOut, "description": "a bad period"}},
)
def stats(
    request: Request,
    from_: Annotated[
        Instant | None,
        Query(alias="from", description="ISO 8601 with an offset; default: `to` − 7 days"),
    ] = None,
    to: Annotated[
        Instant | None, Query(description="ISO 8601 with an offset; default: now")
    ] = None,
) -> StatsOut:
    """Counts of the outcomes recorded in a period (by outcome, reason, rule, channel and
    UTC day), and the deliveries pending, being sent, overdue and failed now. The period is
    at most 400 days."""
    for name, t in (("from", from_), ("to", to)):
        if t is not None and t.tzinfo is None:
            raise ApiError(422, "invalid", f"{name} needs a UTC offset or Z", name)
    rt = request.app.state.runtime
    now = rt.engine.clock.now()
    end = (to or now).astimezone(UTC)
    start = (from_ or end - DEFAULT_PERIOD).astimezone(UTC)
    if start >= end:
        raise ApiError(422, "invalid", "from must be before to", "from")
    if end - start > MAX_PERIOD:
        raise ApiError(422, "invalid", f"the period is at most {MAX_PERIOD.days} days", "from")
    with rt.db.connect() as conn:
        body = period_stats(conn, start, end, now)
        body["receipts"] = receipt_counts(conn, start, end)
    return StatsOut.model_validate(body)
