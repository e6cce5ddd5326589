"""Splits applied to the books.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 09:00:00.000000

The bar guard reads a confirmed jump at a split ratio as a split and scales the position (and the open
orders) of its symbol; the splits table keeps it, so the fills and the splits together explain every
position.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from bot.store.types import ExactDecimal, UTCDateTime

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the splits table."""
    op.create_table(
        "splits",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("book_id", sa.Integer(), nullable=False),
        sa.Column("symbol", sa.String(length=32), nullable=False),
        sa.Column("ts", UTCDateTime(), nullable=False),
        sa.Column("new_shares", sa.Integer(), nullable=False),
        sa.Column("old_shares", sa.Integer(), nullable=False),
        sa.Column("before_close", ExactDecimal(), nullable=False),
        sa.Column("after_open", ExactDecimal(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["book_id"], ["books.id"], name=op.f("fk_splits_book_id_books")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_splits")),
        sa.UniqueConstraint("book_id", "symbol", "ts", name=op.f("uq_splits_book_id_symbol_ts")),
    )


def downgrade() -> None:
    """Drop it."""
    op.drop_table("splits")
