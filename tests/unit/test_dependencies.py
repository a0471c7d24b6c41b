"""Every runtime dependency earns its place: some module of duly imports it (or reads its
package data with ``importlib.resources.files``). Tools used only by the tests or the
benchmarks (rich, for bench/'s tables) belong in the ``test`` and ``bench`` extras."""

import ast
import re
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

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
