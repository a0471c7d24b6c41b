"""The engine: what runs.

- ``service``: the ``Engine`` apps and operators call (upsert subjects and recipients, post
  events, one-off reminders, hold, send now, cancel, retry); it plans through the core and
  writes through the store.
- ``dispatch``: the ``Dispatcher`` that claims due deliveries, applies the policies
  (``dispatch.policies``), renders, sends and records outcomes.
- ``runtime``: wiring for ``duly serve`` and ``duly worker`` (threads, leases, wake-ups).
- ``retention``, ``manual`` (running a rule by hand), ``collect`` (schedule rules' subject
  lists), ``inbox`` (live in-app streams), ``metrics``, and ``simulation`` (the same engine in
  virtual time).
"""
