"""Message ids: stable for a delivery identity within one installation, different between
installations (keyed with the installation's secret), and the same id for the same identity
whichever process computes it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from duly.ack import SECRET_ENV
from duly.ids import MessageIds, message_id_for
from duly.planner import Identity
from duly.store.db import make_engine

IDENT = Identity("invoice-due", "overdue", 0, "invoice/INV-1", "ada", "email")
OTHER = Identity("invoice-due", "overdue", 1, "invoice/INV-1", "ada", "email")


def test_an_id_is_stable_for_an_identity_and_keyed() -> None:
    a = message_id_for(IDENT, b"installation-a")
    assert re.fullmatch(r"[0-9a-f]{32}", a)
    assert message_id_for(IDENT, b"installation-a") == a
    assert message_id_for(OTHER, b"installation-a") != a
    assert message_id_for(IDENT, b"installation-b") != a


def test_the_key_comes_from_the_installations_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "one-secret")
    one = MessageIds()(IDENT)
    assert MessageIds()(IDENT) == one  # another process of the same installation
    assert MessageIds(secret="one-secret")(IDENT) == one
    monkeypatch.setenv(SECRET_ENV, "another-secret")
    assert MessageIds()(IDENT) != one


def test_two_installations_without_a_configured_secret_differ(
    monkeypatch: pytest.MonkeyPatch, sqlite_template: Path, tmp_path: Path
) -> None:
    """Each database generates its own secret once; every process reading it agrees."""
    monkeypatch.delenv(SECRET_ENV, raising=False)
    dbs = []
    for name in ("a.db", "b.db"):
        shutil.copyfile(sqlite_template, tmp_path / name)
        dbs.append(make_engine(f"sqlite:///{tmp_path / name}"))
    try:
        a, b = (MessageIds(db=db)(IDENT) for db in dbs)
        assert a != b
        again = make_engine(f"sqlite:///{tmp_path / 'a.db'}")  # another process of a
        assert MessageIds(db=again)(IDENT) == a
        again.dispose()
    finally:
        for db in dbs:
            db.dispose()
