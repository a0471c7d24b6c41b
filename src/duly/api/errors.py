"""One error shape everywhere: ``{"error": {"code", "message", "field"}}`` with a 4xx status.
A 5xx is a bug; it is logged with its traceback and answered without internals."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from duly.core.errors import DulyError, InvalidInput, NotFound, UnknownSubject

log = logging.getLogger("duly.api")

__all__ = ["ApiError", "error_response", "install"]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "field": field}},
        status_code=status,
        headers=headers,
    )


def _field(loc: tuple[Any, ...] | list[Any]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


_STATUS = {
    "conflict": 409,
    NotFound.code: 404,
    UnknownSubject.code: 422,
    InvalidInput.code: 422,
}


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.field)

    @app.exception_handler(DulyError)
    async def _duly(_: Request, exc: DulyError) -> JSONResponse:
        return error_response(_STATUS.get(exc.code, 400), exc.code, str(exc), exc.field)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request", "type": ""}
        if first.get("type") == "json_invalid":
            return error_response(
                400, "invalid_json", f"the body is not valid JSON: {first.get('msg')}"
            )
        field = _field(first.get("loc", ()))
        msg = first.get("msg", "invalid")
        more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
        return error_response(422, "invalid", f"{field or 'request'}: {msg}{more}", field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {
            401: "unauthorized",
            403: "forbidden",
            404: "not_found",
            405: "method_not_allowed",
            413: "too_large",
        }.get(exc.status_code, "error")
        return error_response(
            exc.status_code, code, str(exc.detail), None, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal error (logged); this is a bug")
