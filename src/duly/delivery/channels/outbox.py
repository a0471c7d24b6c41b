"""The outbox: messages are kept, not sent.

``send()`` does no I/O. The dispatcher stores the rendered message with the delivery in the
database, where ``duly outbox`` and the web UI show it; this is what the ``email`` channel is
when no other is configured (docs/reference/rules.md, "Channels").
"""

from __future__ import annotations

from duly.delivery.channels.base import Message, Receipt

__all__ = ["OutboxChannel"]


class OutboxChannel:
    type = "outbox"
    # nothing leaves the process: the send is the recorded row (the dispatcher records a
    # batch of local sends in one transaction; see duly.engine.dispatch.sending)
    local = True

    def __init__(self, name: str) -> None:
        self.name = name

    def send(self, message: Message) -> Receipt:
        return Receipt(provider_id=f"outbox:{message.message_id}")

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"OutboxChannel(name={self.name!r})"
