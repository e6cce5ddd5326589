"""Alembic environment for paperbot.

Where the database comes from, first match wins:
1. `config.attributes["connection"]`: an open Connection from the caller, used as is (the caller owns its
   transaction; on SQLite the caller should turn foreign keys off first if a migration rebuilds tables);
2. `config.attributes["url"]`: how `bot.store.db.upgrade()` passes it (no ConfigParser '%' pitfalls);
3. the `sqlalchemy.url` main option (e.g. from an alembic.ini);
4. the PAPERBOT_DATABASE_URL environment variable (for the `alembic` CLI).
"""

from __future__ import annotations

import os
from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from bot.store.db import make_engine
from bot.store.models import Base
from bot.store.types import ExactDecimal, UTCDateTime

config = context.config
if config.config_file_name is not None:
    # Only the CLI (alembic.ini) configures logging; called from the daemon, its own logging stays put.
    fileConfig(config.config_file_name, disable_existing_loggers=False)
target_metadata = Base.metadata

# Shared by online and offline mode: batch mode so ALTERs become table rebuilds on SQLite, and type and
# server-default comparison so autogenerate (and `alembic check`) notice those changes too.
COMMON_OPTIONS: dict[str, Any] = {
    "target_metadata": target_metadata,
    "render_as_batch": True,
    # Each migration and its version row commit together: a kill leaves the database at a version.
    "transaction_per_migration": True,
    "compare_type": True,
    "compare_server_default": True,
}


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Render our column types as `ExactDecimal()`/`UTCDateTime()` with a plain import in migrations."""
    if type_ == "type" and isinstance(obj, ExactDecimal | UTCDateTime):
        autogen_context.imports.add("from bot.store.types import ExactDecimal, UTCDateTime")
        return f"{type(obj).__name__}()"
    return False  # everything else: Alembic's default rendering


def database_url() -> str:
    """The URL to migrate when no connection was handed in."""
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    url = url or os.environ.get("PAPERBOT_DATABASE_URL")
    if not url:
        raise RuntimeError(
            "no database URL: use `paperbot db upgrade`, set PAPERBOT_DATABASE_URL, or set sqlalchemy.url"
        )
    return str(url)


def run_migrations_offline() -> None:
    """Emit the migration as SQL text instead of executing it (`alembic upgrade --sql`)."""
    context.configure(
        url=database_url(),
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_item=render_item,
        **COMMON_OPTIONS,
    )
    with context.begin_transaction():
        context.run_migrations()


def _migrate(connection: Connection) -> None:
    context.configure(connection=connection, render_item=render_item, **COMMON_OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


def _transactional_sqlite(engine: Engine) -> None:
    """Make DDL transactional on SQLite: Python's sqlite3 commits by itself before a CREATE or ALTER, so a
    migration killed half-way would leave half a schema. With the driver in autocommit mode, SQLAlchemy's
    own BEGIN opens the transaction, and each migration commits or rolls back whole."""

    @event.listens_for(engine, "connect")
    def _autocommit(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN")


def _migrate_sqlite(connection: Connection) -> None:
    # A batch migration rebuilds a table (create copy, drop old, rename). With foreign keys on, dropping
    # a referenced table would delete-check or fail against its children, so they are off while migrating
    # and the whole database is checked once the tables are back in place. The pragma is ignored inside a
    # transaction: it goes to the driver directly, which is in autocommit mode.
    raw = connection.connection.driver_connection
    assert raw is not None
    raw.execute("PRAGMA foreign_keys=OFF")
    try:
        _migrate(connection)
        violations = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if violations:
            raise RuntimeError(f"migration left rows violating foreign keys: {violations[:10]}")
    finally:
        connection.rollback()
        raw.execute("PRAGMA foreign_keys=ON")


def run_migrations_online() -> None:
    """Run migrations over a live connection: the caller's, or one of our own."""
    connection: Connection | None = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    engine = make_engine(database_url())
    if engine.dialect.name == "sqlite":
        _transactional_sqlite(engine)
    try:
        with engine.connect() as own:
            if own.dialect.name == "sqlite":
                _migrate_sqlite(own)
            else:
                _migrate(own)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
