"""Outgoing webhooks (docs/reference/webhooks.md): signed with the Standard Webhooks
convention, sent from a durable outbox.

- ``outbox``: events are rows written in the transaction of the change they report
  (:func:`emit` for ``webhooks:`` targets, :func:`emit_action` for a rule's ``webhook:``
  action); a row stays pending until it is sent, and every attempt is a row too.
- ``sender``: :class:`WebhookSender` claims due events with a lease, POSTs them, retries
  with backoff.
- ``signing``: the ``webhook-id`` / ``webhook-timestamp`` / ``webhook-signature`` headers.
- ``targets``: public addresses only, unless ``allow_private_targets: true``.

Event types sent to ``webhooks:`` targets: ``subject.updated``, ``delivery.sent``,
``delivery.failed``. The reference is docs/reference/webhooks.md.

Exceptions::

    ValueError
     ├── SecretError          the signing secret is not usable (the event fails)
     └── BodyTemplateError    an action's body template failed (the event fails)
    TargetRefused             the target is not a public address (the event fails)
"""

from __future__ import annotations

from duly.delivery.webhooks.outbox import (
    ACTION_SECRET_ENV,
    ACTION_TYPE,
    BodyTemplateError,
    action_secret_env,
    delivery_data,
    emit,
    emit_action,
    get_event,
    list_events,
    prune,
    redact_url,
    render_body,
    retry,
)
from duly.delivery.webhooks.sender import DEFAULT_TIMEOUT, RetryPolicy, WebhookSender
from duly.delivery.webhooks.signing import SecretError, decode_secret, signature
from duly.delivery.webhooks.targets import TargetRefused, address_problem

__all__ = [
    "ACTION_SECRET_ENV",
    "ACTION_TYPE",
    "DEFAULT_TIMEOUT",
    "BodyTemplateError",
    "RetryPolicy",
    "SecretError",
    "TargetRefused",
    "WebhookSender",
    "action_secret_env",
    "address_problem",
    "decode_secret",
    "delivery_data",
    "emit",
    "emit_action",
    "get_event",
    "list_events",
    "prune",
    "redact_url",
    "render_body",
    "retry",
    "signature",
]
