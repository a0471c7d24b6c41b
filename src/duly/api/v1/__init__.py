"""The /v1 resources: recipients, subjects, events, deliveries, reminders,
rules, simulate, suppressions — one module each (events live with subjects, simulate with
rules). Handlers are plain functions (run in the server's thread pool) over the engine; they
turn its errors into the one JSON error shape.

``router`` is what duly.api.app mounts: every resource's routes under ``/v1``, in the order
above (the order of the OpenAPI document), each documenting the 401, 413 and 422 answers.
"""

from __future__ import annotations

from fastapi import APIRouter

from duly.api.v1 import deliveries, recipients, reminders, rules, subjects, suppressions
from duly.api.v1.common import error_docs

__all__ = ["router"]

router = APIRouter(prefix="/v1", responses=error_docs(401, 413, 422))
for _module in (recipients, subjects, deliveries, reminders, rules, suppressions):
    router.include_router(_module.router)
