"""What the client returns: the API's own response models (pydantic, from
:mod:`duly.api.schemas`, which needs nothing of FastAPI), plus :class:`Health`.

The models of the templates and stats endpoints are defined beside their routes, in modules
that import FastAPI; they are imported from there when first asked for
(``from duly.client.models import TemplateOut``), not when the client is.

Every datetime in them is timezone-aware (the API writes UTC with ``Z``). Fields the server
adds later are ignored, so an older client keeps working against a newer server.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from pydantic import BaseModel, Field

from duly.api.schemas import (
    Attempt,
    BatchOut,
    BatchResult,
    Consent,
    Content,
    DeliveryDetail,
    DeliveryList,
    DeliveryOut,
    ErrorBody,
    EventOut,
    HistoryItem,
    RecipientBatchItem,
    RecipientBatchOut,
    RecipientBatchResult,
    RecipientOut,
    ReminderCounts,
    ReminderOut,
    RuleErrorOut,
    RuleOut,
    RulesCheckOut,
    RulesOut,
    SimulateOut,
    SubjectBatchItem,
    SubjectDetail,
    SubjectOut,
)

__all__ = [
    "Attempt",
    "BatchOut",
    "BatchResult",
    "Consent",
    "Content",
    "DeliveryDetail",
    "DeliveryList",
    "DeliveryOut",
    "ErrorBody",
    "EventOut",
    "Health",
    "HistoryItem",
    "RecipientBatchItem",
    "RecipientBatchOut",
    "RecipientBatchResult",
    "RecipientOut",
    "ReminderCounts",
    "ReminderOut",
    "RuleErrorOut",
    "RuleOut",
    "RulesCheckOut",
    "RulesOut",
    "SimulateOut",
    "SubjectBatchItem",
    "SubjectDetail",
    "SubjectOut",
]


class Health(BaseModel):
    """The answer of ``/healthz`` or ``/readyz``: ``status`` is ``ok`` or ``unavailable``;
    ``checks`` (readiness only) says which part is not ok, e.g. ``{"dispatcher": "stopped"}``."""

    status: str
    checks: dict[str, str] = Field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the server is live (healthz) or ready (readyz)."""
        return self.status == "ok"


LATER = {
    "TemplateList": "duly.api.templates",
    "TemplateOut": "duly.api.templates",
    "SaveOut": "duly.api.templates",
    "PreviewOut": "duly.api.templates",
    "StatsOut": "duly.api.stats",
}


def __getattr__(name: str) -> Any:
    if name in LATER:
        return getattr(import_module(LATER[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
