"""Which of a recipient's addresses a channel uses."""

from __future__ import annotations

import pytest

from duly.core.model import Recipient


@pytest.mark.parametrize(
    ("channel", "channel_type", "expected"),
    [
        ("email", "smtp", "ann@example.com"),
        ("mail", "outbox", "ann@example.com"),
        ("mail", "sendgrid", "ann@example.com"),
        ("mail", "ses", "ann@example.com"),
        ("sms", None, "+15550100"),
        ("text", "twilio-sms", "+15550100"),
        ("wa", "twilio-whatsapp", "+15550100"),
        ("wa", "whatsapp-cloud", "+15550100"),
        ("bell", "inbox", "ann"),
        ("hook", "webhook", "ann"),
        ("chat", "apprise", None),
    ],
)
def test_a_channel_uses_the_address_of_its_kind(
    channel: str, channel_type: str | None, expected: str | None
) -> None:
    ann = Recipient(id="ann", email="ann@example.com", phone="+15550100")
    assert ann.address_for(channel, channel_type) == expected


def test_an_address_named_for_the_channel_is_the_fallback() -> None:
    ann = Recipient(id="ann", addresses={"wa": "+15550199"})
    assert ann.address_for("wa", "whatsapp-cloud") == "+15550199"
