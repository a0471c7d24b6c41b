"""Nothing of the UI is visible without signing in, and a viewer changes nothing: checked
over every route the UI app has, so a page added later is covered too."""

from __future__ import annotations

import importlib
import re

from starlette.routing import Route

from duly.web import PAGES
from webui import VIEWER, Web

# pages anyone may open: the sign-in form, and the static files it needs
PUBLIC = {"/login", "/static"}
# POSTs a viewer may make: signing in and out, their own account, and the POSTs that only
# compute (a template preview, a simulation in a database of its own) and change nothing
VIEWER_POSTS = {
    "/login",
    "/logout",
    "/account/timezone",
    "/account/password",
    "/templates/1/preview",
    "/templates/1/preview-page",
    "/rules/simulate",
}


def _routes(web: Web) -> list[tuple[str, str]]:
    """(method, path) of every route of every page module the UI includes."""
    out = []
    routes = []
    for name in PAGES:
        try:
            routes += importlib.import_module(f"duly.web.views.{name}").router.routes
        except ModuleNotFoundError:
            continue
    for r in routes:
        if not isinstance(r, Route) or r.path in PUBLIC:
            continue
        # fill every path parameter with something plausible
        path = re.sub(r"\{[^}]+\}", "1", r.path)
        for method in sorted((r.methods or set()) - {"HEAD"}):
            out.append((method, path))
    return out


def test_every_page_needs_sign_in(web: Web) -> None:
    routes = _routes(web)
    assert ("GET", "/") in routes or len(routes) > 3, routes
    web.get("/login")  # the CSRF cookie, so POSTs get past CSRF and reach the sign-in check
    token = web.token("/login")
    for method, path in routes:
        if method == "GET":
            r = web.client.get(path, follow_redirects=False)
            assert r.status_code == 303, (path, r.status_code)
            assert r.headers["location"].startswith("/login?next="), path
        elif path not in ("/logout",):
            r = web.client.request(method, path, data={"csrftoken": token}, follow_redirects=False)
            assert r.status_code in (303, 403), (method, path, r.status_code)
            if r.status_code == 303:
                assert r.headers["location"].startswith("/login"), (method, path)


def test_a_viewer_changes_nothing(web: Web) -> None:
    web.login(VIEWER)
    token = web.token("/account")
    for method, path in _routes(web):
        if method != "POST" or path in VIEWER_POSTS:
            continue
        r = web.client.post(path, data={"csrftoken": token}, follow_redirects=False)
        assert r.status_code == 403, (path, r.status_code, r.text[:200])
