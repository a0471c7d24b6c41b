"""Every runtime dependency earns its place: some module of duly imports it (or reads its
package data with ``importlib.resources.files``). Tools used only by the tests or the
benchmarks (rich, for bench/'s tables) belong in the ``test`` and ``bench`` extras."""

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9_.-]+", requirement)
    assert match is not None, requirement
    return match.group(0).lower().replace("_", "-")


def _used_packages() -> set[str]:
    """Top-level packages duly's own modules import or read files of."""
    used: set[str] = set()
    for path in (ROOT / "src" / "duly").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                used |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                used.add(node.module.split(".")[0])
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", None)) == "files"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                used.add(node.args[0].value.split(".")[0])
    return used


def test_every_runtime_dependency_is_used_by_duly() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(d) for d in project["dependencies"]}
    by_package = packages_distributions()
    used = {_name(d) for p in _used_packages() for d in by_package.get(p, [])}
    assert declared - used == set(), "declared but imported by no module of src/duly"


def test_rich_is_for_the_benchmarks_only() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "rich" not in {_name(d) for d in project["dependencies"]}
    assert "rich" in {_name(d) for d in project["optional-dependencies"]["bench"]}
    assert "rich" not in _used_packages()


def _extras() -> dict[str, set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {k: {_name(d) for d in v} for k, v in project["optional-dependencies"].items()}


def test_postgres_and_apprise_are_extras_the_test_extra_includes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    default = {_name(d) for d in project["dependencies"]}
    extras = _extras()
    assert extras["postgres"] == {"psycopg"} and "psycopg" not in default
    assert extras["apprise"] == {"apprise"} and "apprise" not in default
    assert extras["postgres"] | extras["apprise"] <= extras["test"]


# A child interpreter where the module cannot be imported, as when its extra is not installed.
_WITHOUT = "import sys; sys.modules[{module!r}] = None\n"


def _run_without(module: str, code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT.format(module=module) + code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


@pytest.mark.parametrize(
    ("command", "url"),
    [(["migrate"], "postgresql://duly@127.0.0.1:1/duly"), (["keys", "list"], "postgres://h/db")],
    ids=["migrate", "keys-list"],
)
def test_a_postgres_url_without_psycopg_names_the_extra(
    url: str, command: list[str], tmp_path: Path
) -> None:
    code = f"from duly.cli import main; main({[*command, '--database', url]!r})"
    proc = _run_without("psycopg", code, tmp_path)
    assert proc.returncode == 1
    assert "pip install 'duly[postgres]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_make_engine_without_psycopg_raises_the_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from duly.store.db import PostgresDriverMissing, make_engine

    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(PostgresDriverMissing, match=re.escape("pip install 'duly[postgres]'")):
        make_engine("postgresql://duly@127.0.0.1:1/duly")


def test_an_apprise_channel_without_apprise_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import duly.delivery.channels.apprise as channel
    from duly.core.model import ChannelConfig
    from duly.delivery.channels import ChannelConfigError, build_channel

    monkeypatch.setitem(sys.modules, "apprise", None)
    monkeypatch.setattr(channel, "_apprise", None)
    with pytest.raises(ChannelConfigError) as info:
        build_channel(ChannelConfig("chat", "apprise", {"url": "json://example.test/x"}))
    assert str(info.value) == (
        "channel 'chat' (type apprise): the apprise channel needs the apprise package, "
        "which is not installed: pip install 'duly[apprise]'"
    )


def test_duly_worker_with_an_apprise_channel_but_no_apprise_says_so(tmp_path: Path) -> None:
    rules = tmp_path / "duly.yaml"
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "n.chat.txt").write_text("Subject: {{ subject.key }}\nhi\n")
    rules.write_text(
        "channels:\n"
        '  chat: {type: apprise, url: "json://example.test/x"}\n'
        "rules:\n"
        "  - name: r\n    subject: job\n    to: [owner]\n    template: n\n"
        "    channels: [chat]\n"
        '    steps:\n      - {name: s, at: "due_at"}\n'
    )
    database = f"sqlite:///{tmp_path / 'duly.db'}"
    code = (
        "from duly.cli import main; "
        f"main(['worker', '--rules', {str(rules)!r}, '--database', {database!r}])"
    )
    proc = _run_without("apprise", code, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'duly[apprise]'" in proc.stderr
    assert "Traceback" not in proc.stderr
