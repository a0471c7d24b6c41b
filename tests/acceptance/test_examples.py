"""The example packs in ``examples/``: each folder's rules, run over its timeline, must give
exactly its ``expected.jsonl`` (docs/reference/simulate.md), through the real command line.

Every row of every ``expected.jsonl`` was checked by hand against the use cases and
docs/reference/rules.md (see each folder's README). When this test fails, do not just regenerate the
file: read the diff, decide for each changed row whether the new behaviour is what the spec
demands, and only then update it with

    cd examples/FOLDER && duly simulate duly.yaml timeline.jsonl > expected.jsonl
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from duly.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FOLDERS = ["billing", "bookings", "installments", "field-service", "events"]


def _simulate(folder: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """`duly simulate duly.yaml timeline.jsonl`, run from inside the folder (so that
    templates/ resolves as it does for a user); returns stdout."""
    monkeypatch.chdir(folder)
    result = CliRunner().invoke(main, ["simulate", "duly.yaml", "timeline.jsonl"])
    assert result.exit_code == 0, (
        f"duly simulate exited {result.exit_code} in {folder}:\n{result.stderr}{result.exception!r}"
    )
    # A timeline line the API refuses is reported on stderr and skipped: none may be.
    assert result.stderr == "", f"timeline lines refused in {folder}:\n{result.stderr}"
    return result.stdout


def _brief(line: str) -> str:
    """One outcome row, short enough to read in a diff."""
    try:
        o = json.loads(line)
    except json.JSONDecodeError:
        return line
    where = f"{o.get('rule')}/{o.get('step') or '-'}#{o.get('occurrence')}"
    who = f"{o.get('subject')} {o.get('recipient') or '-'} {o.get('channel') or '-'}"
    what = o.get("outcome", "?") + (f" ({o['reason']})" if o.get("reason") else "")
    return f"{o.get('at')} (planned {o.get('planned')}) {where} {who}: {what}"


def _diff(expected: list[str], actual: list[str]) -> str:
    short = difflib.unified_diff(
        [_brief(x) for x in expected],
        [_brief(x) for x in actual],
        "expected.jsonl",
        "duly simulate",
        lineterm="",
        n=2,
    )
    full = difflib.unified_diff(
        expected, actual, "expected.jsonl", "duly simulate", lineterm="", n=0
    )
    return (
        f"{len(expected)} rows expected, {len(actual)} produced.\n\n"
        "Rows that differ (at, planned, identity, outcome):\n"
        + "\n".join(short)
        + "\n\nExact lines:\n"
        + "\n".join(full)
    )


@pytest.mark.parametrize("name", FOLDERS)
def test_simulation_matches_expected(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = EXAMPLES / name
    first = _simulate(folder, monkeypatch)
    expected = (folder / "expected.jsonl").read_text(encoding="utf-8").splitlines()
    actual = first.splitlines()
    if actual != expected:
        pytest.fail(f"examples/{name}: the simulation changed.\n{_diff(expected, actual)}")
    # Deterministic: a second run gives the same bytes (docs/reference/simulate.md).
    second = _simulate(folder, monkeypatch)
    assert second == first, (
        f"examples/{name}: two runs differ:\n{_diff(first.splitlines(), second.splitlines())}"
    )


@pytest.mark.parametrize("name", FOLDERS)
def test_rules_check(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(EXAMPLES / name)
    result = CliRunner().invoke(main, ["rules", "check", "duly.yaml"])
    assert result.exit_code == 0, result.stderr or result.stdout
    assert "OK" in result.stdout


@pytest.mark.parametrize("name", FOLDERS)
def test_folder_is_complete(name: str) -> None:
    """README, rules, timeline and expected output; every email template has both an HTML
    and a plain-text part."""
    folder = EXAMPLES / name
    for f in ("README.md", "duly.yaml", "timeline.jsonl", "expected.jsonl"):
        assert (folder / f).is_file(), f"examples/{name}/{f} is missing"
    templates = folder / "templates"
    emails = {p.name.split(".email.")[0] for p in templates.glob("*.email.*")}
    emails.discard("_layout")
    for t in sorted(emails):
        for ext in ("txt", "html"):
            assert (templates / f"{t}.email.{ext}").is_file(), f"{name}: {t}.email.{ext} missing"


def test_every_example_folder_is_tested() -> None:
    found = sorted(p.parent.name for p in EXAMPLES.glob("*/duly.yaml"))
    assert found == sorted(FOLDERS)
