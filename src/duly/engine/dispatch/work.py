"""The dispatcher's working state: a claimed delivery with what was loaded and decided for
it during one cycle (``_Work``), and what one batch's decisions share (``_Cycle``: last
sends for spacing, suppressed addresses, messages counted against rate limits). Data only;
it decides nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from duly.core.model import Recipient, Rule, Step, Subject
from duly.delivery.channels.base import Message
from duly.store.store import DeliveryRow


@dataclass(slots=True)
class _Work:
    row: DeliveryRow
    rule: Rule | None = None
    step: Step | None = None
    subject: Subject | None = None
    recipient: Recipient | None = None
    event: dict[str, Any] | None = None
    message: Message | None = None
    reminder: dict[str, Any] | None = None
    collected: dict[str, Any] | None = None
    address: str | None = None
    tzname: str | None = None
    suppress: tuple[str, str, str] | None = None  # (address, channel, reason)
    rendered: Any = None
    probe: bool = False  # the breaker's half-open probe: a temporary failure costs no attempt
    released: bool = False  # stopping: given back unsent, pending again
    update: dict[str, Any] = field(default_factory=dict)
    logs: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class _Cycle:
    """What one batch's decisions share: last sends (spacing), suppressed addresses, and
    messages counted against rate limits so far."""

    gaps: dict[tuple[str, str, str, str], datetime | None] = field(default_factory=dict)
    suppressed: set[str] = field(default_factory=set)
    sent: dict[tuple[str, str], int] = field(default_factory=dict)
    batch_keys: set[tuple[str, str, str, str]] = field(default_factory=set)
