"""The inbox: in-app notifications, read through the API (``/v1/recipients/{id}/inbox``).

``send()`` does no I/O. The dispatcher stores the rendered message with the delivery (state
``sent``); that row *is* the inbox item, listed, counted, marked read and streamed
(Server-Sent Events) by :mod:`duly.engine.inbox` and :mod:`duly.api.inbox`.
"""

from __future__ import annotations

from duly.delivery.channels.base import Message, Receipt

__all__ = ["InboxChannel"]


class InboxChannel:
    type = "inbox"
    # Not ``local`` (as the outbox is): the group commit of a few milliseconds lets open
    # streams receive the items of a large batch as they are sent, not all at its end.

    def __init__(self, name: str) -> None:
        self.name = name

    def send(self, message: Message) -> Receipt:
        return Receipt(provider_id=f"inbox:{message.message_id}")

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"InboxChannel(name={self.name!r})"
