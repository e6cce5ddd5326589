"""Persistence: SQLAlchemy models, backend-neutral column types, engines and Alembic migrations.

- `bot.store.types`: `ExactDecimal` (money), `UTCDateTime` (instants), `to_money`.
- `bot.store.models`: `Base` and one mapped class per table, plus the StrEnums stored in String columns.
- `bot.store.db`: `make_engine`, `session_factory`, `upgrade`, `downgrade`, `current_revision`,
  `schema_is_current`, `database_problem` (a failure as the one line the CLI prints).
- `bot.store.faults`: which database failures are temporary, a full disk, a read-only file, or neither.
- `bot.store.retry`: `DatabaseRetry`, which redoes a whole transaction after a temporary fault.
- `bot.store.bulk`: `BulkWrite`, many rows into one table in one statement (the journal's batches).
"""
