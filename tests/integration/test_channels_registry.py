"""Building channels from the rule file's ``channels:`` section."""

from __future__ import annotations

import subprocess
import sys

import pytest

from duly.core.model import ChannelConfig
from duly.delivery.channels import (
    CHANNEL_TYPES,
    ChannelConfigError,
    Receipt,
    UnsupportedChannel,
    build_channel,
)
from duly.delivery.channels.base import Message
from duly.delivery.channels.null import NullChannel
from duly.delivery.channels.outbox import OutboxChannel
from duly.delivery.channels.smtp import SmtpChannel

MESSAGE = Message(
    to="ada@example.test",
    title="Invoice due",
    text="Please pay.\n",
    html=None,
    message_id="d-1@duly.test",
    recipient_id="r1",
)


def test_outbox_keeps_the_message_for_the_dispatcher_to_store() -> None:
    channel = build_channel(ChannelConfig("email", "outbox"))
    assert isinstance(channel, OutboxChannel)
    assert (channel.name, channel.type) == ("email", "outbox")
    assert channel.send(MESSAGE) == Receipt(provider_id="outbox:d-1@duly.test")
    channel.close()


def test_null_accepts_everything() -> None:
    channel = build_channel(ChannelConfig("bench", "null"))
    assert isinstance(channel, NullChannel)
    assert channel.send(MESSAGE).provider_id == "null:d-1@duly.test"
    channel.close()


def test_smtp_options_become_arguments() -> None:
    config = ChannelConfig(
        "email",
        "smtp",
        {
            "url": "smtps://mail.example.test",
            "from": "Acme <billing@acme.test>",
            "max_connections": 2,
        },
    )
    channel = build_channel(config)
    assert isinstance(channel, SmtpChannel)
    assert (channel.name, channel.type, channel.max_connections) == ("email", "smtp", 2)
    assert channel.from_ == "Acme <billing@acme.test>"
    channel.close()  # never connected: nothing to do


@pytest.mark.parametrize(
    ("type_", "problem"),
    [("pigeon", "'pigeon' is not a channel type")],
)
def test_unsupported_types_are_named(type_: str, problem: str) -> None:
    with pytest.raises(UnsupportedChannel) as info:
        build_channel(ChannelConfig("ops", type_))
    assert isinstance(info.value, NotImplementedError)
    assert isinstance(info.value, ChannelConfigError)
    supported = (
        "apprise, inbox, mailgun, null, outbox, postmark, sendgrid, ses, smtp, "
        "twilio-sms, twilio-whatsapp, webhook, whatsapp-cloud"
    )
    assert str(info.value) == f"channel 'ops' (type {type_}): {problem}; supported: {supported}"


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"url": "smtp://h"}, "missing option 'from'"),
        ({"from": "a@b.test"}, "missing option 'url'"),
        (
            {"url": "smtp://h", "from": "a@b.test", "form": "x"},
            "unknown option 'form' (accepted: url, from, timeout, max_connections, message_id_domain)",
        ),
        (
            {"url": "smtp://h", "from": "a@b.test", "timeout": "soon"},
            "timeout: expected a number of seconds above 0, not 'soon'",
        ),
        ({"url": "smtp://h", "from": "a@b.test", "timeout": 0}, "timeout: expected a number"),
        (
            {"url": "smtp://h", "from": "a@b.test", "max_connections": "0"},
            "max_connections: expected a whole number from 1, not '0'",
        ),
        ({"url": "smtps://h?ca_file=/nonexistent.pem", "from": "a@b.test"}, "cannot load ca_file"),
    ],
)
def test_bad_smtp_options_name_the_channel_and_option(
    options: dict[str, object], problem: str
) -> None:
    with pytest.raises(ChannelConfigError) as info:
        build_channel(ChannelConfig("email", "smtp", options))
    assert str(info.value).startswith("channel 'email' (type smtp): ")
    assert problem in str(info.value)


def test_outbox_takes_no_options() -> None:
    with pytest.raises(ChannelConfigError, match="unknown option 'url' \\(accepted: none\\)"):
        build_channel(ChannelConfig("email", "outbox", {"url": "smtp://h"}))


def test_channel_modules_are_imported_only_when_used() -> None:
    code = (
        "import sys, duly.delivery.channels as c\n"
        "from duly.core.model import ChannelConfig\n"
        "assert not any(m in sys.modules for m in ('duly.delivery.channels.smtp', 'smtplib'))\n"
        "c.build_channel(ChannelConfig('e', 'outbox'))\n"
        "assert 'duly.delivery.channels.smtp' not in sys.modules\n"
        "print(sorted(c.CHANNEL_TYPES))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(sorted(CHANNEL_TYPES))


def test_outbox_and_inbox_channels_are_built_even_when_no_rule_uses_them() -> None:
    """One-off reminders (API and UI) may use the implicit email outbox and inbox channels
    with rules that never name them: the runtime must build them."""
    from duly.core.rules.loader import load_rules
    from duly.engine.runtime import BUNDLED_RULES, build_channels

    rf = load_rules(str(BUNDLED_RULES))
    assert "inbox" not in {c for r in rf.rules for c in r.channels}
    built = build_channels(rf)
    assert {"email", "inbox"} <= set(built)
