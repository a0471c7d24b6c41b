"""Channels: one module per transport, built from the rule file's ``channels:`` section.

``CHANNEL_TYPES`` maps a type name to the class implementing it; a module is imported only
when a channel of its type is built, so an unused transport costs nothing (and its
dependencies need not be installed).

Exceptions::

    ValueError
     └── ChannelConfigError         bad or missing option for a channel
          └── UnsupportedChannel    no implementation of that type (also NotImplementedError)
    DeliveryError                   raised by send(); .permanent says whether to retry
"""

from __future__ import annotations

import importlib
import inspect
import keyword
from typing import Any

from duly.core.model import ChannelConfig
from duly.delivery.channels.base import Channel, DeliveryError, Message, Receipt

__all__ = [
    "CHANNEL_TYPES",
    "Channel",
    "ChannelConfigError",
    "DeliveryError",
    "Message",
    "Receipt",
    "UnsupportedChannel",
    "build_channel",
]

CHANNEL_TYPES: dict[str, str] = {
    "smtp": "duly.delivery.channels.smtp:SmtpChannel",
    "outbox": "duly.delivery.channels.outbox:OutboxChannel",
    "inbox": "duly.delivery.channels.inbox:InboxChannel",
    "null": "duly.delivery.channels.null:NullChannel",
    "webhook": "duly.delivery.channels.webhook:WebhookChannel",
    "twilio-sms": "duly.delivery.channels.twilio:TwilioSmsChannel",
    "twilio-whatsapp": "duly.delivery.channels.twilio:TwilioWhatsAppChannel",
    "whatsapp-cloud": "duly.delivery.channels.whatsapp_cloud:WhatsAppCloudChannel",
    "apprise": "duly.delivery.channels.apprise:AppriseChannel",
    "sendgrid": "duly.delivery.channels.sendgrid:SendGridChannel",
    "postmark": "duly.delivery.channels.postmark:PostmarkChannel",
    "mailgun": "duly.delivery.channels.mailgun:MailgunChannel",
    "ses": "duly.delivery.channels.ses:SesChannel",
}

# Named in docs/reference/rules.md but not implemented yet: building one says so, rather than
# calling the type unknown.
_PLANNED_TYPES: tuple[str, ...] = ()

# The option through which a channel that sends over the network accepts private and
# loopback targets (see duly.delivery.channels._http).
_ALLOW_PRIVATE = "allow_private"


class ChannelConfigError(ValueError):
    """A channel's configuration is invalid."""


class UnsupportedChannel(ChannelConfigError, NotImplementedError):
    """No channel of this type is available."""


def build_channel(config: ChannelConfig, *, allow_private_targets: bool = False) -> Channel:
    """The channel ``config`` describes, its options passed as keyword arguments.

    Option names map to parameters with ``-`` as ``_`` and a Python keyword suffixed
    with ``_`` (``from`` → ``from_``). Raises :class:`ChannelConfigError` naming the channel
    and the option when an option is unknown, missing or invalid.

    ``allow_private_targets`` (the rule file's setting) is the default of the
    ``allow_private`` option of the channels that have one (webhook, twilio-*, apprise);
    the channel's own option, when given, wins.
    """
    where = f"channel {config.name!r} (type {config.type})"
    target = CHANNEL_TYPES.get(config.type)
    if target is None:
        if config.type in _PLANNED_TYPES:
            problem = "is not implemented yet"
        else:
            problem = "is not a channel type"
        supported = ", ".join(sorted(CHANNEL_TYPES))
        raise UnsupportedChannel(f"{where}: {config.type!r} {problem}; supported: {supported}")

    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    kwargs = _keyword_arguments(cls, config.options, where)
    if allow_private_targets and _ALLOW_PRIVATE not in kwargs:
        if _ALLOW_PRIVATE in inspect.signature(cls).parameters:
            kwargs[_ALLOW_PRIVATE] = True
    try:
        channel: Channel = cls(config.name, **kwargs)
    except ValueError as exc:
        raise ChannelConfigError(f"{where}: {exc}") from exc
    return channel


def _keyword_arguments(cls: type, options: dict[str, Any], where: str) -> dict[str, Any]:
    params = {
        name: p
        for name, p in inspect.signature(cls).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }

    def option_name(param: str) -> str:
        return param[:-1] if param.endswith("_") and keyword.iskeyword(param[:-1]) else param

    kwargs: dict[str, Any] = {}
    for key, value in options.items():
        param = key.replace("-", "_")
        if keyword.iskeyword(param):
            param += "_"
        if param not in params:
            accepted = ", ".join(option_name(p) for p in params) or "none"
            raise ChannelConfigError(f"{where}: unknown option {key!r} (accepted: {accepted})")
        kwargs[param] = value
    missing = [
        option_name(name)
        for name, p in params.items()
        if p.default is inspect.Parameter.empty and name not in kwargs
    ]
    if missing:
        raise ChannelConfigError(f"{where}: missing option {', '.join(map(repr, missing))}")
    return kwargs
