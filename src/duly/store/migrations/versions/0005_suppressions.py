"""Suppressed addresses.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Instant = sa.DateTime(timezone=False)


def upgrade() -> None:
    op.create_table(
        "suppressions",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("channel", sa.String(100), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("delivery_id", Id, nullable=True),
        sa.Column("created_at", Instant, nullable=False),
        sa.Column("cleared_at", Instant, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_suppressions")),
        sqlite_autoincrement=True,
    )
    # serves the dispatcher's look-up of active suppressions by address
    op.create_index("ix_suppressions_address", "suppressions", ["address"])


def downgrade() -> None:
    op.drop_index("ix_suppressions_address", table_name="suppressions")
    op.drop_table("suppressions")
