"""Fixtures of the web UI tests (helpers in tests/webui.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from webui import Web, make_web  # tests/ is on sys.path (tests/conftest.py)


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    w = make_web(tmp_path)
    try:
        yield w
    finally:
        w.close()
