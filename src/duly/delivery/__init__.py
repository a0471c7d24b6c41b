"""Delivery: turning a decided delivery into a message and handing it to a provider.

- ``channels``: one module per transport (SMTP, email provider APIs, Twilio, WhatsApp,
  webhooks, Apprise, the inbox and the outbox); they import neither the store nor the engine.
- ``rendering``: templates rendered in a sandbox, in worker processes with time and memory
  limits.
- ``templates``: templates edited in the UI or API, versioned in the database.
- ``webhooks``: outgoing event webhooks (outbox, signing, sending).
- ``ids``: stable Message-IDs; ``ack`` and ``preferences``: the signed links a message carries
  (acknowledge, preferences, one-click unsubscribe) and what following them does.
"""
