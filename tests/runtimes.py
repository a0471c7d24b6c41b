"""A runtime (engine, store, database; no dispatcher running) over a rule file given as
text, with a ``templates`` folder holding the one-line ``plain`` email template the tests'
rules name. tests/ is on sys.path (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

from duly.core.rules.loader import load_rules_text
from duly.engine.runtime import Runtime, build_runtime

PLAIN = "Subject: {{ subject.key }}\nDue.\n"


def runtime_from(rules: str, db_url: str, tmp_path: Path) -> Runtime:
    """``build_runtime`` over ``rules`` (written as if at ``tmp_path/duly.yaml``); the
    caller disposes of ``runtime.db``."""
    tdir = tmp_path / "templates"
    tdir.mkdir()
    (tdir / "plain.email.txt").write_text(PLAIN)
    rf = load_rules_text(rules, path=str(tmp_path / "duly.yaml"), templates_dir=str(tdir))
    return build_runtime(rf, db_url)
