"""Delivery receipts (provider status callbacks) and the last inbound message per address.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_AT = sa.DateTime(timezone=False)


def upgrade() -> None:
    op.create_table(
        "delivery_receipts",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("delivery_id", _ID, nullable=True),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("provider_message_id", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("hard", sa.Boolean(), nullable=False),
        sa.Column("occurred_at", _AT, nullable=False),
        sa.Column("received_at", _AT, nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            name=op.f("fk_delivery_receipts_delivery_id_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_receipts")),
        sa.UniqueConstraint(
            "provider",
            "provider_message_id",
            "status",
            "occurred_at",
            name=op.f("uq_delivery_receipts_provider_provider_message_id_status_occurred_at"),
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_delivery_receipts_delivery_id", "delivery_receipts", ["delivery_id"])
    op.create_index("ix_delivery_receipts_received_at", "delivery_receipts", ["received_at"])
    # serves the look-up of a delivery by the id its provider gave it (Receipt.provider_id);
    # hash on PostgreSQL: equality only, and no size limit on the receipt (a b-tree has one)
    op.create_index("ix_deliveries_receipt", "deliveries", ["receipt"], postgresql_using="hash")
    op.create_table(
        "inbound_addresses",
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("channel", sa.String(length=100), nullable=False),
        sa.Column("last_at", _AT, nullable=False),
        sa.PrimaryKeyConstraint("address", "channel", name=op.f("pk_inbound_addresses")),
    )


def downgrade() -> None:
    op.drop_table("inbound_addresses")
    op.drop_index("ix_deliveries_receipt", table_name="deliveries")
    op.drop_index("ix_delivery_receipts_received_at", table_name="delivery_receipts")
    op.drop_index("ix_delivery_receipts_delivery_id", table_name="delivery_receipts")
    op.drop_table("delivery_receipts")
