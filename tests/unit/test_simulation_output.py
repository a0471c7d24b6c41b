"""The people's table `duly simulate --table` prints: its summary line."""

from __future__ import annotations

from duly.engine.simulation.output import table


def _row(outcome: str, reason: str | None = None) -> dict[str, str | None]:
    return {"at": "2026-01-01T09:00:00Z", "rule": "r", "outcome": outcome, "reason": reason}


def test_the_summary_counts_outcomes_in_words() -> None:
    assert list(table([_row("sent")]))[-1] == "1 outcome: sent: 1"
    last = list(table([_row("sent"), _row("skipped", "held"), _row("sent")]))[-1]
    assert last == "3 outcomes: sent: 2, skipped (held): 1"
