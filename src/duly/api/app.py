"""The HTTP application served by ``duly serve``. This issue serves liveness and readiness;
the /v1 API arrives with its own issue."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from duly import __version__


def create_app(runtime: Any) -> FastAPI:
    app = FastAPI(title="duly", version=__version__)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        """Readiness: the database answers and the dispatcher thread is alive."""
        checks: dict[str, str] = {}
        try:
            with runtime.db.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # report, never 500
            checks["database"] = f"error: {type(exc).__name__}"
        alive = runtime.thread is not None and runtime.thread.is_alive()
        checks["dispatcher"] = "ok" if alive else "stopped"
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "checks": checks},
            status_code=200 if ok else 503,
        )

    return app
