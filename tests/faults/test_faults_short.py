"""The short fault suite (``bench/faults.py --short``) against real processes: ``duly serve``
and ``duly worker``s on a PostgreSQL cluster of the suite's own, ``duly serve`` on SQLite,
an SMTP sink counting arrivals per Message-ID.

It needs root and Debian's PostgreSQL cluster tools (``pg_createcluster``); without them it
skips, except under ``CI=true``, where it fails. The suite runs once (a few minutes) for the
whole module; each scenario is then a test of its own.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
SCENARIOS = [
    "kill-light",
    "kill-backlog",
    "pg-restart",
    "slow-relay",
    "relay-outage",
    "sqlite-kill",
    "sqlite-full",
]

# one PostgreSQL cluster (dulyfaultstest, port 5545) for the module: under pytest-xdist the
# module's tests stay in one worker (--dist loadfile, or this group under --dist loadgroup)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800), pytest.mark.xdist_group("faults")]


def _why_not() -> str | None:
    sys.path.insert(0, str(BENCH))
    try:
        from _harness import PgCluster
    finally:
        sys.path.remove(str(BENCH))
    return PgCluster.tools_missing()


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    why = _why_not()
    if why:
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"the fault suite cannot run: {why}; in CI it must run", pytrace=False)
        pytest.skip(f"the fault suite cannot run here: {why}")
    out = tmp_path_factory.mktemp("faults")
    figures = out / "faults.json"
    # a cluster of the test's own, on a port nobody else uses: a developer's run of
    # bench/faults.py (cluster dulyfaults) can go on meanwhile. Two test runs on one machine
    # (two checkouts, a CI clone beside a working tree) would share it and stop each other's
    # cluster ("connection refused" mid-scenario): they take turns on a lock file instead.
    with open(Path(tempfile.gettempdir()) / "duly-faults-test.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        proc = subprocess.run(
            [sys.executable, str(BENCH / "faults.py"), "--short", "--json", str(figures),
             "--pg-cluster", "dulyfaultstest", "--pg-port", "5545"],
            cwd=ROOT, capture_output=True, text=True, timeout=1700,
        )  # fmt: skip
    if not figures.exists():
        pytest.fail(f"the fault suite did not finish:\n{proc.stderr[-5000:]}", pytrace=False)
    data = json.loads(figures.read_text())
    data["text"] = proc.stdout
    return data


def _result(suite: dict[str, Any], name: str) -> dict[str, Any]:
    r = next((r for r in suite["results"] if r["scenario"] == name), None)
    assert r is not None, f"{name} did not run:\n{suite['text']}"
    assert not r.get("crashed"), f"{name} could not run: {r['crashed']}"
    return r


@pytest.mark.parametrize("name", SCENARIOS)
def test_nothing_lost(suite: dict[str, Any], name: str) -> None:
    r = _result(suite, name)
    assert r["planned"] > 0 and r["planned"] == r["planned_api"], suite["text"]
    assert r["lost"] == 0, f"{name}: {r['lost']} lost ({r['lost_states']})\n{suite['text']}"
    assert r["stray_arrivals"] == 0, suite["text"]


@pytest.mark.parametrize("name", SCENARIOS)
def test_duplicates_only_from_sends_in_flight_at_a_crash(suite: dict[str, Any], name: str) -> None:
    r = _result(suite, name)
    # no crash, no duplicate: slowness and relay errors alone never resend
    assert r["unexplained_duplicates"] == 0, suite["text"]
    # each crash exposes at most the sends in flight then (the send concurrency)...
    assert r["in_flight_over_bound"] == 0, [
        f for f in r["fault_list"] if (f["exposed"] or 0) > f["bound"]
    ]
    # ...and the duplicates are no more than what the crashes exposed
    assert r["duplicates"] <= r["in_flight_measured"] <= r["in_flight_bound"], suite["text"]
    # and every duplicated delivery says so in the API (possibly sent before)
    rec = r["recorded_possibly_sent"]
    assert rec["recorded"] == rec["checked"], f"{name}: {rec}\n{suite['text']}"


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_process_sends_again(suite: dict[str, Any], name: str) -> None:
    r = _result(suite, name)
    assert r["recovery"]["silent"] == [], suite["text"]
    assert r["never_retaken"] == 0, suite["text"]
    assert r["thread_deaths"] == 0, suite["text"]


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_delivery_ends_sent(suite: dict[str, Any], name: str) -> None:
    # none of these faults is a reason to give up on a delivery: outages and a full disk
    # wait without spending attempts, a crash's rows are retaken
    r = _result(suite, name)
    assert r["states"] == {"sent": r["planned"]}, f"{name}: {r['states']}\n{suite['text']}"
