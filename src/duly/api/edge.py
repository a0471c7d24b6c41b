"""The checks every /v1 operation gets before its handler runs (a dependency of the routers,
added in duly.api.app): text in path and query parameters and anywhere in a JSON body is
Unicode that encodes as UTF-8 and has no NUL; a JSON body nests at most ``MAX_BODY_DEPTH``
levels. A failure is a 422 naming the parameter or the body's field
(``subjects.2.attributes.note``), so no handler, database or serialiser ever sees such
input. Limits by meaning (attributes, instants) are the schemas' (duly.api.schemas)."""

from __future__ import annotations

import base64

from fastapi import Request

from duly.api.errors import ApiError
from duly.core.validation import MAX_DEPTH, json_problem, text_problem

__all__ = ["MAX_BODY_DEPTH", "checked_input", "id_cursor", "id_from_cursor"]

# A body's own levels (a batch item's attributes are 3 levels down) plus attributes' limit.
MAX_BODY_DEPTH = MAX_DEPTH + 8

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Bodies whose items are checked one by one (the engine's own checks, the same limits), so
# one bad item is refused in its own result and never stops the rest.
PER_ITEM_BODIES = frozenset({"/v1/subjects:batch"})


def _refuse(field: str | None, problem: str) -> ApiError:
    where = field or "body"
    return ApiError(422, "invalid", f"{where}: {problem}", field)


async def checked_input(request: Request) -> None:
    for name, value in request.path_params.items():
        if isinstance(value, str) and (problem := text_problem(value)):
            raise _refuse(name, problem)
    for name, value in request.query_params.multi_items():
        problem = text_problem(name) or text_problem(value)
        if problem:
            raise _refuse(name, problem)
    if request.method not in _BODY_METHODS or request.url.path in PER_ITEM_BODIES:
        return
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype and ctype != "application/json" and not ctype.endswith("+json"):
        return
    try:
        # FastAPI parsed the body before the dependencies run; Starlette keeps the result
        body = await request.json()
    except Exception:  # not JSON: the operation's own body validation answers that
        return
    found = json_problem(body, max_depth=MAX_BODY_DEPTH)
    if found is not None:
        raise _refuse(*found)


# --------------------------------------------------------------------------- cursors

# Row ids are positive and below 2**62 on both databases (BIGINT on PostgreSQL).
MAX_ID = 2**62


def id_cursor(tag: str, after: int) -> str:
    """An opaque paging cursor: the id of the last row of a page, tagged with its list."""
    return base64.urlsafe_b64encode(f"{tag}:{after}".encode()).decode()


def id_from_cursor(tag: str, cursor: str | None) -> int | None:
    """The id in a cursor :func:`id_cursor` gave out for the list ``tag``; anything else
    (malformed, another list's, an id out of range) is a 422 naming ``cursor``."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor.encode("ascii")).decode("ascii")
    except (ValueError, UnicodeError):
        raw = ""
    got, _, num = raw.partition(":")
    if got != tag or not num.isdigit() or len(num) > 19 or not 1 <= int(num) <= MAX_ID:
        raise ApiError(422, "invalid", "cursor is not one this API gave out", "cursor")
    return int(num)
