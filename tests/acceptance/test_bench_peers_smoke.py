"""bench/peers.py still runs: duly alone on SQLite, a few hundred reminders, a 3 s lateness
window (~30 s). The peers need virtualenvs of their own and are not run here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_peers_runs_duly_quick(tmp_path: Path) -> None:
    out = tmp_path / "peers.json"
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "peers.py"), "--systems", "duly", "--quick",
         "--n", "200", "--drain", "200", "--window", "3", "--duly-backends", "sqlite",
         "--no-save", "--json", str(out)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["errors"] == {}
    res = data["results"]["duly-sqlite"]
    assert res["schedule"]["n"] == 200 and res["schedule"]["per_s"] > 0
    assert res["drain"]["executed"] == 200
    assert res["lateness"]["ran"] == res["lateness"]["planned"] == 249
    assert res["resources"]["peak_rss_mb"] > 0
    assert "duly beside its peers" in r.stdout
