"""The one interface every channel implements.

A channel turns a rendered message into a send over some transport. ``send()`` returns a
receipt (the provider's id for the message) or raises :class:`DeliveryError`; only errors
with ``permanent=False`` are retried.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Channel", "DeliveryError", "Message", "Receipt"]


class DeliveryError(Exception):
    """The channel could not deliver the message."""

    def __init__(
        self,
        message: str,
        *,
        permanent: bool = False,
        code: str | None = None,
        address: bool = False,
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.code = code
        # the failure is about the recipient's address (SMTP 5xx on RCPT, an invalid
        # number): a permanent one suppresses that address (spec: Suppression)
        self.address = address


@dataclass(frozen=True, slots=True)
class Message:
    """What the dispatcher hands a channel: rendered content plus who and why."""

    to: str  # the address on this channel (email address, phone number, recipient id …)
    title: str | None  # email subject / first line
    text: str | None
    html: str | None
    message_id: str  # stable for the delivery identity: a resend after a crash reuses it
    recipient_id: str
    recipient_name: str | None = None
    # headers that identify the delivery: rule, step, occurrence, subject, delivery id
    headers: dict[str, str] = field(default_factory=dict)
    category: str = "reminder"
    # the rule's or step's ``whatsapp:`` template for the WhatsApp channels, its variables
    # rendered: {content_sid, template, language, freeform, variables} (None: the channel's)
    whatsapp: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Receipt:
    provider_id: str | None = None
    detail: str | None = None


class Channel(Protocol):
    name: str
    type: str

    def send(self, message: Message) -> Receipt:
        """Deliver one message. Raises DeliveryError(permanent=...) on failure."""
        ...

    def close(self) -> None:
        """Release connections (called on shutdown)."""
        ...
