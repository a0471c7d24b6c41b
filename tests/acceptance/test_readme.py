"""The README's HTTP API sessions work as printed: each code block marked
``<!-- test: NAME -->`` runs against a real `duly serve` started as the README starts it (the
bundled rules and demo data, ``./duly.db`` in the current folder, ``.venv/bin/duly`` at
hand), and prints what the block marked ``<!-- output: NAME -->`` shows, where ``…`` stands
for any text within a line.

The only change made to a block is the server's address: ``http://localhost:8000`` becomes
the test server's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from live import Live, live_server  # tests/ is on sys.path (conftest.py)

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
ADDRESS = "http://localhost:8000"


def blocks(text: str) -> dict[str, str]:
    """``{"test: NAME": code, "output: NAME": text}`` for every fenced block right after a
    ``<!-- test: NAME -->`` or ``<!-- output: NAME -->`` comment."""
    found = re.findall(
        r"<!-- ((?:test|output): [\w-]+) -->\n```[\w-]*\n(.*?)^```$", text, re.M | re.S
    )
    out: dict[str, str] = {}
    for label, body in found:
        assert label not in out, f"README.md: two blocks marked {label!r}"
        out[label] = body
    return out


def assert_prints(expected: str, actual: str) -> None:
    """Line by line, ``actual`` is ``expected`` with each ``…`` standing for any text."""
    want = expected.rstrip("\n").splitlines()
    got = actual.rstrip("\n").splitlines()
    assert len(got) == len(want), f"expected {len(want)} lines, got:\n{actual}"
    for n, (w, g) in enumerate(zip(want, got, strict=True), 1):
        pattern = ".*?".join(re.escape(part) for part in w.split("…"))
        assert re.fullmatch(pattern, g), f"line {n}:\n  README: {w}\n  actual: {g}"


@pytest.fixture(scope="module")
def readme() -> dict[str, str]:
    found = blocks(README.read_text(encoding="utf-8"))
    for name in ("curl", "python"):
        assert f"test: {name}" in found and f"output: {name}" in found, name
    return found


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder as the README leaves it: ``.venv`` (this one, linked) and nothing else."""
    venv = Path(sys.prefix)
    if not (venv / "bin" / "duly").exists():
        pytest.skip(f"not run from a virtualenv with duly installed ({venv})")
    tmp = tmp_path_factory.mktemp("readme")
    (tmp / ".venv").symlink_to(venv)
    return tmp


@pytest.fixture(scope="module")
def live(folder: Path) -> Iterator[Live]:
    # `duly serve` in that folder: bundled rules, demo data, ./duly.db
    with live_server(folder, demo=True) as server:
        yield server


def shell_env(**extra: str) -> dict[str, str]:
    """The user's environment: no DULY_* settings, so every default applies."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DULY")}
    return {**env, **extra}


def test_the_curl_session(readme: dict[str, str], folder: Path, live: Live) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    script = readme["test: curl"]
    assert ADDRESS in script
    out = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script.replace(ADDRESS, live.url)],
        cwd=folder,
        env=shell_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "created" in out.stderr  # duly keys create says so on stderr
    assert_prints(readme["output: curl"], out.stdout)


def test_the_python_session(readme: dict[str, str], folder: Path, live: Live) -> None:
    code = readme["test: python"]
    assert ADDRESS in code
    (folder / "session.py").write_text(code.replace(ADDRESS, live.url))
    out = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", ".venv/bin/python session.py"],
        cwd=folder,
        env=shell_env(KEY=live.key),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert_prints(readme["output: python"], out.stdout)


def test_the_output_matching_is_strict() -> None:
    assert_prints('{"a":1,…,"z":3}\nok', '{"a":1,"b":2,"z":3}\nok\n')
    for wrong in ('{"a":1,"b":2,"z":4}\nok', '{"a":1,"z":3}\nok\nmore', '{"a":1,"z":3}'):
        with pytest.raises(AssertionError):
            assert_prints('{"a":1,…,"z":3}\nok', wrong)


def test_gap_the_client_needs_httpx_installed_with_duly() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(re.match(r"httpx\b", d) for d in project["dependencies"])
