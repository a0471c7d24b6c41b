"""The header search: a normalized ``search`` column on subjects and recipients (filled
here for the rows that exist), its index, and indexes on subjects' key and deliveries'
Message-ID.

On PostgreSQL the ``search`` columns get a trigram index, from the ``pg_trgm`` extension
(shipped with PostgreSQL; a trusted extension since PostgreSQL 13, so the database's owner
may create it). When it cannot be created the migration goes on without those two
indexes: the search works, reading the whole table.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from duly.store.search import recipient_search_text, subject_search_text

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 1000
_log = logging.getLogger("alembic.runtime.migration")

# the tables as this revision knows them (not duly.store.tables: that follows later ones)
_subjects = sa.table(
    "subjects",
    sa.column("id", sa.Integer),
    sa.column("kind", sa.String),
    sa.column("key", sa.String),
    sa.column("attributes", sa.JSON),
    sa.column("recipients", sa.JSON),
    sa.column("deleted_at", sa.DateTime),
    sa.column("search", sa.Text),
)
_recipients = sa.table(
    "recipients",
    sa.column("id", sa.String),
    sa.column("name", sa.Text),
    sa.column("email", sa.Text),
    sa.column("phone", sa.Text),
    sa.column("search", sa.Text),
)


def _trigrams_available(bind: sa.engine.Connection) -> bool:
    try:
        with bind.begin_nested():
            bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except sa.exc.DBAPIError as e:
        _log.warning(
            "pg_trgm could not be created (%s): the search works without its index, "
            "reading whole tables; create the extension and run this migration again to "
            "have it",
            str(e.orig).strip().splitlines()[0] if e.orig else e,
        )
        return False
    return True


def _backfill(bind: sa.engine.Connection) -> None:
    last = None
    while True:
        q = sa.select(
            _subjects.c.id,
            _subjects.c.kind,
            _subjects.c.key,
            _subjects.c.attributes,
            _subjects.c.recipients,
        ).where(_subjects.c.deleted_at.is_(None))
        if last is not None:
            q = q.where(_subjects.c.id > last)
        rows = bind.execute(q.order_by(_subjects.c.id).limit(_BATCH)).all()
        if not rows:
            break
        last = rows[-1].id
        bind.execute(
            _subjects.update()
            .where(_subjects.c.id == sa.bindparam("_id"))
            .values(search=sa.bindparam("_search")),
            [
                {
                    "_id": r.id,
                    "_search": subject_search_text(
                        r.kind, r.key, r.attributes or {}, r.recipients or {}
                    ),
                }
                for r in rows
            ],
        )
    last_rid = None
    while True:
        q = sa.select(
            _recipients.c.id, _recipients.c.name, _recipients.c.email, _recipients.c.phone
        )
        if last_rid is not None:
            q = q.where(_recipients.c.id > last_rid)
        rows = bind.execute(q.order_by(_recipients.c.id).limit(_BATCH)).all()
        if not rows:
            break
        last_rid = rows[-1].id
        bind.execute(
            _recipients.update()
            .where(_recipients.c.id == sa.bindparam("_id"))
            .values(search=sa.bindparam("_search")),
            [
                {"_id": r.id, "_search": recipient_search_text(r.id, r.name, r.email, r.phone)}
                for r in rows
            ],
        )


def upgrade() -> None:
    bind = op.get_bind()
    op.add_column("subjects", sa.Column("search", sa.Text(), nullable=True))
    op.add_column("recipients", sa.Column("search", sa.Text(), nullable=True))
    _backfill(bind)
    trigrams = bind.dialect.name != "postgresql" or _trigrams_available(bind)
    if trigrams:
        for table in ("subjects", "recipients"):
            op.create_index(
                f"ix_{table}_search",
                table,
                ["search"],
                postgresql_using="gin",
                postgresql_ops={"search": "gin_trgm_ops"},
            )
    op.create_index("ix_subjects_key", "subjects", ["key"])
    op.create_index("ix_deliveries_message_id", "deliveries", ["message_id"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_message_id", table_name="deliveries")
    op.drop_index("ix_subjects_key", table_name="subjects")
    op.execute("DROP INDEX IF EXISTS ix_recipients_search")
    op.execute("DROP INDEX IF EXISTS ix_subjects_search")
    with op.batch_alter_table("recipients") as batch:
        batch.drop_column("search")
    with op.batch_alter_table("subjects") as batch:
        batch.drop_column("search")
