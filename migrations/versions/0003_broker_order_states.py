"""Order states in the brokers' own words.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 10:00:00.000000

Orders follow the broker's states (new, partially_filled, filled, canceled, rejected, expired) plus
unknown. `submitted` and `accepted` were paperbot's words for an order the broker had taken: that is the
broker's `new`. `cancelled` is spelled as the brokers spell it.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Rename the statuses in place."""
    op.execute("UPDATE orders SET status = 'new' WHERE status IN ('submitted', 'accepted')")
    op.execute("UPDATE orders SET status = 'canceled' WHERE status = 'cancelled'")


def downgrade() -> None:
    """Back to the old words (an acknowledged new order was `accepted`; expired had no word: cancelled)."""
    op.execute("UPDATE orders SET status = 'accepted' WHERE status = 'new' AND broker_order_id IS NOT NULL")
    op.execute("UPDATE orders SET status = 'cancelled' WHERE status IN ('canceled', 'expired')")
