"""Persistence: SQLAlchemy models, backend-neutral column types, engines and Alembic migrations.

- `bot.store.types`: `ExactDecimal` (money), `UTCDateTime` (instants), `to_money`.
- `bot.store.models`: `Base` and one mapped class per table, plus the StrEnums stored in String columns.
- `bot.store.db`: `make_engine`, `session_factory`, `upgrade`, `downgrade`, `current_revision`,
  `schema_is_current`.
"""
