"""API keys, templates kept in the database, one-off reminders.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Instant = sa.DateTime(timezone=False)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", Instant, nullable=False),
        sa.Column("last_used_at", Instant, nullable=True),
        sa.Column("revoked_at", Instant, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "templates",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("channel", sa.String(100), nullable=False),
        sa.Column("ext", sa.String(8), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("author", sa.String(200), nullable=True),
        sa.Column("created_at", Instant, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_templates")),
        sa.UniqueConstraint(
            "name", "channel", "ext", "version", name=op.f("uq_templates_name_channel_ext_version")
        ),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "reminders",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("send_at", Instant, nullable=False),
        sa.Column("channels", sa.JSON(), nullable=False),
        sa.Column("recipients", sa.JSON(), nullable=False),
        sa.Column("subject", sa.String(301), nullable=True),
        sa.Column("category", sa.String(16), nullable=False),
        sa.Column("created_at", Instant, nullable=False),
        sa.Column("updated_at", Instant, nullable=False),
        sa.Column("deleted_at", Instant, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reminders")),
        sqlite_autoincrement=True,
    )
    # serves the subject page's list of its reminders
    op.create_index("ix_reminders_subject", "reminders", ["subject"])


def downgrade() -> None:
    op.drop_index("ix_reminders_subject", table_name="reminders")
    op.drop_table("reminders")
    op.drop_table("templates")
    op.drop_table("api_keys")
