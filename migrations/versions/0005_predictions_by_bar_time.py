"""Predictions unique by (book, bar time, strategy, symbol, horizon): the bar time second.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 12:00:00.000000

The unique constraint on predictions had the symbol before the bar time, so every batch inserted one
entry per symbol and horizon all over the index: at 1000 symbols each commit wrote back a page or more
per symbol, and the cost grew with the table. With the bar time second a batch's entries are adjacent, at
the end of the index. Same columns, same uniqueness; the (book_id, bar_ts) index is now its prefix and
goes. The rows stay as they are (on SQLite the table is rebuilt to drop the old constraint).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Replace the unique constraint and the index with one unique constraint, bar time second."""
    with op.batch_alter_table("predictions") as batch:
        batch.drop_constraint(op.f("uq_predictions_book_id_strategy_symbol_bar_ts_horizon"), type_="unique")
        batch.drop_index(op.f("ix_predictions_book_id_bar_ts"))
        batch.create_unique_constraint(
            op.f("uq_predictions_book_id_bar_ts_strategy_symbol_horizon"),
            ["book_id", "bar_ts", "strategy", "symbol", "horizon"],
        )


def downgrade() -> None:
    """The constraint and the index as 0001 made them."""
    with op.batch_alter_table("predictions") as batch:
        batch.drop_constraint(op.f("uq_predictions_book_id_bar_ts_strategy_symbol_horizon"), type_="unique")
        batch.create_unique_constraint(
            op.f("uq_predictions_book_id_strategy_symbol_bar_ts_horizon"),
            ["book_id", "strategy", "symbol", "bar_ts", "horizon"],
        )
        batch.create_index(op.f("ix_predictions_book_id_bar_ts"), ["book_id", "bar_ts"])
