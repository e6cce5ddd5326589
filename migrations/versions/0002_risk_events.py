"""Trading-state events and the daily-loss bookkeeping of trading states.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 10:00:00.000000

trading_state_events records every change of trading state (breach, operator, daily reset) with its
reason; trading_states gains the cause of its state, the trading day's start and equity, and the id of
the last operator event applied to it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from bot.store.types import ExactDecimal, UTCDateTime

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the events table and the new trading_states columns."""
    op.create_table(
        "trading_state_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("book_id", sa.Integer(), nullable=False),
        sa.Column("ts", UTCDateTime(), nullable=False),
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("previous", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("equity", ExactDecimal(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["book_id"], ["books.id"], name=op.f("fk_trading_state_events_book_id_books")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trading_state_events")),
    )
    op.create_index(op.f("ix_trading_state_events_book_id_ts"), "trading_state_events", ["book_id", "ts"])
    with op.batch_alter_table("trading_states") as batch:
        batch.add_column(sa.Column("cause", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("day_start", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("day_equity", ExactDecimal(), nullable=True))
        batch.add_column(sa.Column("event_id", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    """Drop them again."""
    with op.batch_alter_table("trading_states") as batch:
        batch.drop_column("event_id")
        batch.drop_column("day_equity")
        batch.drop_column("day_start")
        batch.drop_column("cause")
    op.drop_table("trading_state_events")
