"""The store contract: every query duly runs, named, in one place.

Every module of ``duly.store`` holds queries; nothing outside the package may import
SQLAlchemy or ``duly.store.tables``, nor build SQL. Each query takes an open ``Connection`` inside the
caller's transaction (the service and the dispatcher decide transaction boundaries), and
states its guarantee in its docstring. The same code runs on SQLite and PostgreSQL; where
they differ (row locking for claims and plans) the difference is in the store module only.

:class:`Store` gathers the queries the engine, the dispatcher and the surfaces call through
one object (it knows the dialect); each group lives in the module of what it serves:

- :mod:`duly.store.rows` — the row types handed out (``SubjectRecord``, ``DeliveryRow``),
  the bulk insert and the delivery log every group writes through.
- :mod:`duly.store.recipients` — recipients, suppressed addresses, sent counts (rate limits).
- :mod:`duly.store.subjects` — subjects, events, one-off reminders, planning problems; the
  live subjects a schedule collects.
- :mod:`duly.store.plan` — the rows the planner reconciles against and applying its
  actions; pending rows of a recipient, of a reminder; schedule occurrences.
- :mod:`duly.store.deliveries` — claims, leases, finishing, holds, gaps (the dispatcher)
  and operator actions on one delivery (send now, retry).
- :mod:`duly.store.reading` — listings, one delivery's history, outcomes, counts, the
  outcome statistics a schedule collects, the gauges ``/metrics`` serves.
- :mod:`duly.store.notify` — PostgreSQL ``NOTIFY``/``LISTEN`` that wakes dispatchers.
- :mod:`duly.store.liveness` — the database answers; dispatchers' heartbeat rows.
- :mod:`duly.store.demo` — the demo's fabricated history, written straight into the tables.

``duly.store.db`` makes engines and runs migrations; ``duly.store.tables`` declares the
schema.
"""

from __future__ import annotations

from duly.store.deliveries import DeliveryQueries
from duly.store.plan import PlanQueries
from duly.store.reading import ReadingQueries
from duly.store.recipients import RecipientQueries
from duly.store.rows import DeliveryRow, SubjectRecord
from duly.store.subjects import SubjectQueries

__all__ = ["DeliveryRow", "Store", "SubjectRecord"]


class Store(RecipientQueries, SubjectQueries, PlanQueries, DeliveryQueries, ReadingQueries):
    """Queries over the tables in ``duly.store.tables``: ``Store(postgres=...)``."""
