"""``duly serve`` runs uvicorn on its C parser and event loop when they are installed and
falls back to the pure-Python ones when they are not (duly.cli.server.http_stack)."""

import sys

import pytest

from duly.cli.server import http_stack


def test_the_c_stack_when_installed() -> None:
    pytest.importorskip("httptools")
    pytest.importorskip("uvloop")
    assert http_stack() == {"http": "httptools", "loop": "uvloop"}


def test_the_pure_python_stack_without_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httptools", None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, "uvloop", None)
    assert http_stack() == {"http": "h11", "loop": "asyncio"}
    monkeypatch.delitem(sys.modules, "uvloop")
    pytest.importorskip("uvloop")
    assert http_stack() == {"http": "h11", "loop": "uvloop"}
