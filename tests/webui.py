"""Helpers for web UI tests: the UI in-process: the real app (API + pages) over a migrated SQLite file, driven by
Starlette's TestClient. Browser tests (tests/browser) drive a real `duly serve` instead.

``web`` gives a :class:`Web` with two users, ``admin`` (role admin) and ``viewer`` (role
viewer), and nobody signed in. ``web.login()`` signs in; ``web.post(url, data)`` sends a form
with the CSRF token, as the browser does. ``web.rt`` is the runtime (engine, store, db); the
dispatcher is not running unless the test calls ``web.start()``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from duly.app import create_app
from duly.core.rules.loader import load_rules
from duly.engine.runtime import BUNDLED_RULES, build_runtime
from duly.web.users import UserStore

ADMIN = ("admin", "admin password 1")
VIEWER = ("viewer", "viewer password 1")

# hostile text for escaping tests: it must come back escaped, never as markup
HOSTILE = "<script>alert(1)</script>"
HOSTILE_ATTR = '"><img src=x onerror=alert(1)>'

_TOKEN = re.compile(r'name="csrftoken" value="([^"]+)"')


class Web:
    def __init__(self, rt: Any, client: TestClient) -> None:
        self.rt, self.client = rt, client
        self.engine = rt.engine
        self._started = False

    # -- requests ---------------------------------------------------------------------
    def get(self, url: str, **kw: Any) -> Any:
        return self.client.get(url, **kw)

    def token(self, url: str = "/login") -> str:
        """The CSRF token a page's forms carry (the cookie is set by the same answer)."""
        r = self.client.get(url)
        m = _TOKEN.search(r.text)
        assert m, f"no CSRF token on {url}: {r.status_code} {r.text[:300]}"
        return m.group(1)

    def post(
        self,
        url: str,
        data: dict[str, Any] | None = None,
        *,
        token_from: str = "/login",
        files: Any = None,
        **kw: Any,
    ) -> Any:
        body = {"csrftoken": self.token(token_from), **(data or {})}
        return self.client.post(url, data=body, files=files, follow_redirects=False, **kw)

    def login(self, who: tuple[str, str] = ADMIN) -> Web:
        r = self.post("/login", {"username": who[0], "password": who[1]})
        assert r.status_code == 303, r.text[:500]
        return self

    def logout(self) -> None:
        self.post("/logout", token_from="/account")

    # -- engine -----------------------------------------------------------------------
    def start(self) -> None:
        """Run the dispatcher (sends what is due, e.g. after "send now")."""
        self.rt.start()
        self._started = True

    def close(self) -> None:
        self.client.close()
        if self._started:
            self.rt.stop()
        else:
            self.rt.db.dispose()


def make_web(tmp_path: Path, rules: str | Path | None = None, database: str | None = None) -> Web:
    rf = load_rules(str(rules or BUNDLED_RULES))
    url = database or f"sqlite:///{tmp_path / 'web.db'}"
    rt = build_runtime(rf, url)
    users = UserStore(rt.db)
    now = datetime.now(UTC)
    users.create(ADMIN[0], ADMIN[1], "admin", now)
    users.create(VIEWER[0], VIEWER[1], "viewer", now)
    client = TestClient(create_app(rt), base_url="http://127.0.0.1:8000")
    return Web(rt, client)


_seq = iter(range(1, 10**9))


def add_delivery(web: Web, **kw: Any) -> int:
    """Insert one delivery row with a Core insert (any state, any content: what pages show,
    without planning it) and return its id. Defaults: a sent invoice reminder to alice by
    email, due now; ``planned_at`` is ``due_at`` and ``sent_at`` (when sent) too."""
    import sqlalchemy as sa

    from duly.store.tables import deliveries

    now = web.engine.clock.now()
    row: dict[str, Any] = {
        "rule": "invoice-reminders",
        "step": "due-soon",
        "occurrence": str(next(_seq)),
        "subject": "invoice/INV-1",
        "recipient": "alice",
        "channel": "email",
        "state": "sent",
        "category": "reminder",
        "due_at": now,
        "created_at": now,
        "updated_at": now,
    }
    row.update(kw)
    row.setdefault("planned_at", row["due_at"])
    if row["state"] == "sent":
        row.setdefault("sent_at", row["due_at"])
    with web.rt.db.begin() as conn:
        return int(conn.execute(sa.insert(deliveries).values(**row)).inserted_primary_key[0])
