"""A channel that accepts every message at once and keeps nothing: for benchmarks, where
the cost of a transport would hide the engine's own."""

from __future__ import annotations

from duly.delivery.channels.base import Message, Receipt

__all__ = ["NullChannel"]


class NullChannel:
    type = "null"

    def __init__(self, name: str) -> None:
        self.name = name

    def send(self, message: Message) -> Receipt:
        return Receipt(provider_id=f"null:{message.message_id}")

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"NullChannel(name={self.name!r})"
