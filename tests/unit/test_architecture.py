"""The architecture the tree promises (ARCHITECTURE.md), checked.

- the store contract: outside ``duly.store`` no module imports SQLAlchemy or the table
  definitions, so every query duly runs lives in ``src/duly/store``;
- the layer contracts in ``pyproject.toml`` (``[tool.importlinter]``), run by import-linter:
  a pure core, a store that imports only the core, channels without store or surfaces, an
  engine and delivery layer that import no surface, an API and a web UI that do not import
  each other;
- modules stay small enough to read: about 600 lines at most.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "duly"
STORE = PACKAGE / "store"
MAX_LINES = 650  # "about 600": a module may run a little over, not double


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def _sql_imports(path: Path, root: Path = ROOT) -> list[str]:
    bad = []
    for line, name in _imports(path):
        for forbidden in ("sqlalchemy", "duly.store.tables"):
            if name == forbidden or name.startswith(forbidden + "."):
                bad.append(f"{path.relative_to(root)}:{line}: imports {name}")
    return bad


def test_no_query_outside_the_store() -> None:
    """Every SQL statement is built in ``duly.store``: nothing else imports SQLAlchemy or the
    tables (not even for type hints; ``duly.store.db.Connection`` names the handle)."""
    offenders = [
        bad for path in _modules() if STORE not in path.parents for bad in _sql_imports(path)
    ]
    assert offenders == [], "\n".join(offenders)


def test_the_check_finds_a_query_outside_the_store(tmp_path: Path) -> None:
    """The check above is not vacuous: a page that builds its own SELECT is caught."""
    page = tmp_path / "page.py"
    page.write_text(
        "import sqlalchemy as sa\nfrom duly.store.tables import deliveries\n"
        "q = sa.select(deliveries)\n"
    )
    found = _sql_imports(page, tmp_path)
    assert [f.split(": ", 1)[1] for f in found] == [
        "imports sqlalchemy",
        "imports duly.store.tables",
        "imports duly.store.tables.deliveries",
    ]


def test_layer_contracts_hold() -> None:
    """import-linter, with the contracts written in pyproject.toml."""
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.fail("import-linter is not installed: pip install -e '.[test]'")
    done = subprocess.run(
        [str(lint), str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert re.search(r"Contracts: \d+ kept, 0 broken", done.stdout), done.stdout[-4000:]


def test_modules_are_a_readable_size() -> None:
    sizes = {p: len(p.read_text(encoding="utf-8").splitlines()) for p in _modules()}
    over = [f"{p.relative_to(ROOT)}: {n} lines" for p, n in sizes.items() if n > MAX_LINES]
    assert over == [], "cut these by concern:\n" + "\n".join(over)


def _named_in_architecture() -> list[tuple[str, str | None]]:
    """Every ``path.py`` or ``path.py::name`` ARCHITECTURE.md names in backquotes."""
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)  # the picture of the layers
    found = []
    for quoted in re.findall(r"`([^`]+)`", text):
        m = re.fullmatch(r"([\w/]+\.py)(?:::(\w+))?", quoted)
        if m:
            found.append((m.group(1), m.group(2)))
    return found


def _resolve(path: str, context: list[Path]) -> Path | None:
    """A path as ARCHITECTURE.md writes it: from the package (``core/model.py``), or short
    inside a folder named just before (``policies.py`` after ``engine/dispatch/…``)."""
    for base in [PACKAGE, *context, ROOT]:
        if (base / path).is_file():
            return base / path
    hits = sorted(PACKAGE.rglob(path))
    return hits[0] if len(hits) == 1 else None


def test_architecture_md_names_files_and_functions_that_exist() -> None:
    """A reader following ARCHITECTURE.md through the code finds every module and function
    it names (so a move or a rename that forgets the document fails here)."""
    missing, context = [], []
    for path, name in _named_in_architecture():
        file = _resolve(path, context)
        if file is None:
            missing.append(path)
            continue
        context = [file.parent]
        if name and not re.search(
            rf"^\s*(?:async\s+)?(?:def|class)\s+{name}\b|^{name}\s*=",
            file.read_text(encoding="utf-8"),
            re.M,
        ):
            missing.append(f"{path}::{name}")
    assert len(_named_in_architecture()) > 30
    assert missing == [], missing
