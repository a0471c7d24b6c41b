"""The application ``duly serve`` runs: the HTTP API (:mod:`duly.api`) with the web UI's
pages (:mod:`duly.web`) served by the same app.

The two surfaces do not import each other; this module puts them together. The UI is a
separate ASGI app that :class:`duly.web.UiDispatch`, the innermost of the API's middleware,
hands the UI's paths to, so the pages keep their sessions, CSRF checks and HTML errors, and
the API its JSON errors, while the body limit and the catch-all for bugs cover both.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from duly.api.app import DEFAULT_MAX_BODY, create_api

__all__ = ["DEFAULT_MAX_BODY", "create_app"]


def create_app(
    runtime: Any, *, max_body: int = DEFAULT_MAX_BODY, ui: bool = True, cookie_secure: bool = False
) -> FastAPI:
    """The API; with ``ui`` also the web UI's pages (with ``cookie_secure`` their cookies
    go over HTTPS only: ``duly serve --cookie-secure``)."""
    inner: list[tuple[Any, dict[str, Any]]] = []
    if ui:
        from duly.web import UiDispatch, build_ui

        inner.append((UiDispatch, {"ui": build_ui(runtime, cookie_secure=cookie_secure)}))
    return create_api(runtime, max_body=max_body, inner=inner)
