"""What the ``duly`` command line needs to know about database errors.

Commands that run maintenance on a database the operator names (``duly prune``) catch the
errors a query raises on a database that was never migrated, to say so plainly instead of
printing a traceback. The command line imports no SQLAlchemy: the error classes and their
driver message come from here.
"""

from __future__ import annotations

from sqlalchemy.exc import OperationalError, ProgrammingError

__all__ = ["SCHEMA_ERRORS", "driver_message"]

# What a query raises when its tables are missing or differ (SQLite: OperationalError
# "no such table"; PostgreSQL: ProgrammingError "relation ... does not exist").
SCHEMA_ERRORS: tuple[type[Exception], ...] = (OperationalError, ProgrammingError)


def driver_message(exc: Exception) -> str:
    """The database driver's own message of an error in :data:`SCHEMA_ERRORS` (SQLAlchemy's
    ``orig``: e.g. ``no such table: deliveries``), without SQLAlchemy's wrapping and SQL
    text; ``str(exc)`` for any other exception."""
    return str(getattr(exc, "orig", exc))
