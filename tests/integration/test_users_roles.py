"""The last admin is kept even when two admins are demoted at the same moment (SQLite and
PostgreSQL): the role check and the change are one transaction that takes the admins' rows
in turn."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from duly.core.errors import InvalidInput
from duly.store.db import make_engine
from duly.web.users import UserStore


def test_two_admins_demoted_at_once_leave_one(db_url: str) -> None:
    db = make_engine(db_url)
    users = UserStore(db)
    now = datetime.now(UTC)
    try:
        for round_ in range(4):
            a, b = f"a{round_}", f"b{round_}"
            for u in users.list():
                users.delete(u.username)
            users.create(a, "a password 123", "admin", now)
            users.create(b, "b password 123", "admin", now)
            start = threading.Barrier(2)
            refused: list[str] = []

            def demote(name: str, start: threading.Barrier, refused: list[str]) -> None:
                start.wait()
                try:
                    users.set_role(name, "viewer", datetime.now(UTC), keep_admin=True)
                except InvalidInput:
                    refused.append(name)

            threads = [threading.Thread(target=demote, args=(n, start, refused)) for n in (a, b)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            admins = [u.username for u in users.list() if u.role == "admin"]
            assert len(admins) == 1 and len(refused) == 1, (admins, refused)
    finally:
        db.dispose()
