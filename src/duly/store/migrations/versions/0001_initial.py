"""Initial schema.

Revision ID: 0001
Revises:
Create Date: 2026-11-26

Written out by hand rather than with ``metadata.create_all()``, so that this revision stays
what it was when later ones change ``duly.store.tables`` and diff against it. Constraint and
index names are spelled out as the naming convention in ``duly.store.tables.NAMING`` makes
them (``op.f()`` marks a name as final), so later migrations can drop or alter them by name
on every backend.

Column types are plain SQLAlchemy types: ``UTCDateTime`` is a Python-side conversion over
``DateTime(timezone=False)`` (naive UTC in the database), so the database sees a DATETIME /
TIMESTAMP WITHOUT TIME ZONE either way, and this file does not change if that class does.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Surrogate keys: BIGINT (BIGSERIAL) on PostgreSQL, INTEGER on SQLite, where only a column of
# exactly that type becomes the autoincrementing rowid.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# An instant: naive UTC in the database (see tables.UTCDateTime).
Instant = sa.DateTime(timezone=False)


def upgrade() -> None:
    op.create_table(
        "recipients",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column("phone", sa.Text(), nullable=True),
        sa.Column("timezone", sa.String(64), nullable=True),
        sa.Column("locale", sa.String(35), nullable=True),
        sa.Column("addresses", sa.JSON(), nullable=False),
        sa.Column("consent", sa.JSON(), nullable=False),
        sa.Column("created_at", Instant, nullable=False),
        sa.Column("updated_at", Instant, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recipients")),
    )

    op.create_table(
        "subjects",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(100), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("recipients", sa.JSON(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("hold_until", Instant, nullable=True),
        sa.Column("acknowledged", sa.JSON(), nullable=False),
        sa.Column("deleted_at", Instant, nullable=True),
        sa.Column("created_at", Instant, nullable=False),
        sa.Column("updated_at", Instant, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subjects")),
        sa.UniqueConstraint("kind", "key", name=op.f("uq_subjects_kind_key")),
    )

    op.create_table(
        "deliveries",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        # identity
        sa.Column("rule", sa.String(200), nullable=False),
        sa.Column("step", sa.String(200), nullable=False),
        sa.Column("occurrence", sa.String(200), nullable=False),
        sa.Column("subject", sa.String(301), nullable=False),
        sa.Column("recipient", sa.String(200), nullable=False),
        sa.Column("channel", sa.String(100), nullable=False),
        # plan
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(32), nullable=True),
        sa.Column("category", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("planned_at", Instant, nullable=False),
        sa.Column("due_at", Instant, nullable=False),
        sa.Column("deadline_at", Instant, nullable=True),
        # dispatch
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(100), nullable=True),
        sa.Column("lease_until", Instant, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("error_count", sa.Integer(), nullable=False),
        # content and receipt
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("body_text", sa.Text(), nullable=True),
        sa.Column("body_html", sa.Text(), nullable=True),
        sa.Column("to_address", sa.Text(), nullable=True),
        sa.Column("message_id", sa.String(200), nullable=True),
        sa.Column("receipt", sa.Text(), nullable=True),
        sa.Column("sent_at", Instant, nullable=True),
        sa.Column("changes", sa.JSON(), nullable=True),
        sa.Column("created_at", Instant, nullable=False),
        sa.Column("updated_at", Instant, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deliveries")),
        # the delivery identity: the database, not the planner, guarantees one row each
        sa.UniqueConstraint(
            "rule",
            "step",
            "occurrence",
            "subject",
            "recipient",
            "channel",
            name=op.f("uq_deliveries_rule_step_occurrence_subject_recipient_channel"),
        ),
        # ids appear in the API, the outbox and links: never reuse one on SQLite
        sqlite_autoincrement=True,
    )
    # serves claim_due(): pending rows by due time
    op.create_index("ix_deliveries_state_due", "deliveries", ["state", "due_at"])
    # serves re-planning (all rows of one subject) and the subject page
    op.create_index("ix_deliveries_subject", "deliveries", ["subject"])
    # serves min_gap and per-recipient history
    op.create_index("ix_deliveries_recipient", "deliveries", ["recipient", "rule", "sent_at"])

    op.create_table(
        "delivery_log",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("delivery_id", Id, nullable=False),
        sa.Column("at", Instant, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("reason", sa.String(32), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("receipt", sa.Text(), nullable=True),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("message_id", sa.String(200), nullable=True),
        sa.Column("planned_at", Instant, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_log")),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            name=op.f("fk_delivery_log_delivery_id_deliveries"),
            ondelete="CASCADE",
        ),
        sqlite_autoincrement=True,
    )
    # serves history of one delivery
    op.create_index("ix_delivery_log_delivery_id", "delivery_log", ["delivery_id"])
    # serves the outcome feed (simulate, stats) ordered by time
    op.create_index("ix_delivery_log_at", "delivery_log", ["at"])

    op.create_table(
        "events",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("subject", sa.String(301), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("received_at", Instant, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )

    op.create_table(
        "subject_errors",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("subject", sa.String(301), nullable=False),
        sa.Column("rule", sa.String(200), nullable=True),
        sa.Column("field", sa.String(200), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("at", Instant, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subject_errors")),
    )
    op.create_index("ix_subject_errors_subject", "subject_errors", ["subject"])

    op.create_table(
        "workers",
        sa.Column("id", sa.String(100), nullable=False),
        sa.Column("host", sa.String(200), nullable=True),
        sa.Column("started_at", Instant, nullable=False),
        sa.Column("heartbeat_at", Instant, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )


def downgrade() -> None:
    # Dropping a table drops its indexes; children before parents.
    op.drop_table("workers")
    op.drop_table("subject_errors")
    op.drop_table("events")
    op.drop_table("delivery_log")
    op.drop_table("deliveries")
    op.drop_table("subjects")
    op.drop_table("recipients")
