"""An index for claiming due work one priority level at a time.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # serves claim_due(): due rows of one priority level, oldest first
    op.create_index(
        "ix_deliveries_state_priority_due", "deliveries", ["state", "priority", "due_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_deliveries_state_priority_due", table_name="deliveries")
