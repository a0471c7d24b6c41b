"""The one representation of an indefinite hold (spec/rules.md "Hold"): the core value,
the engine's input, the planner with it, and the CLI's manual-run lines."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from duly.core.errors import InvalidInput
from duly.core.model import HOLD_INDEFINITE, held_until_cleared
from duly.engine.manual import RunItem, RunReport
from duly.engine.service.inputs import SubjectInput, _to_subject, _validate_subject


def test_only_the_kept_instant_is_held_until_cleared() -> None:
    assert held_until_cleared(HOLD_INDEFINITE)
    assert not held_until_cleared(None)
    assert not held_until_cleared(datetime(2030, 1, 1, tzinfo=UTC))
    # a date given beyond it is the date given, not "indefinite"
    assert not held_until_cleared(datetime(9500, 1, 1, tzinfo=UTC))


def test_the_engine_reads_indefinite_as_the_kept_instant() -> None:
    s = SubjectInput("invoice", "1", {}, {}, "indefinite")
    _validate_subject(s)
    assert _to_subject(s, None).hold_until == HOLD_INDEFINITE
    with pytest.raises(InvalidInput) as exc:
        _validate_subject(SubjectInput("invoice", "1", {}, {}, "forever"))
    assert exc.value.field == "hold_until"


def test_a_manual_run_says_until_the_hold_is_cleared() -> None:
    at = datetime(2026, 3, 1, tzinfo=UTC)
    report = RunReport("chase", "event", False, at)
    report.items.append(
        RunItem(
            1, "chase", None, "e1", "invoice/1", "c1", "email", "deferred", due_at=HOLD_INDEFINITE
        )
    )
    text = "\n".join(report.lines())
    assert "until the hold is cleared" in text and "9000" not in text
