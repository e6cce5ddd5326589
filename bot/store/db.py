"""Engines, sessions and schema migrations for SQLite (single host, WAL) and PostgreSQL."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

import bot
from bot.errors import ConfigError, DatabaseFaultError, OperationalError, PaperbotError
from bot.store.faults import Fault, classify

MIGRATIONS_DIR = Path(bot.__file__).resolve().parent.parent / "migrations"
"""The Alembic script directory (env.py, versions/) at the repository root."""

SQLITE_BUSY_TIMEOUT = 5.0
"""Seconds a SQLite writer waits for another writer's lock before failing with 'database is locked'
(`[daemon] database_busy_timeout_seconds`)."""


def _sqlite_on_connect(busy_timeout_ms: int, dbapi_connection: Any, _record: Any) -> None:
    # Pragmas are per connection, so they must run on every new pooled connection, not once per file.
    # WAL lets the report/CLI read while the daemon writes; NORMAL is durable across process crashes in
    # WAL mode (only an OS crash can lose the last commits); SQLite leaves foreign keys off by default.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
    finally:
        cursor.close()


def _sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL, or None for in-memory and `file:` URI databases."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser()


def make_engine(url: str, busy_timeout: float = SQLITE_BUSY_TIMEOUT) -> Engine:
    """An Engine for `url`, configured for the daemon's needs on each backend.

    SQLite: creates the file's parent folder if missing and sets WAL, synchronous=NORMAL, foreign keys
    and a busy timeout of `busy_timeout` seconds on every connection. PostgreSQL (and others): pings
    pooled connections before use so a database restart costs a reconnect instead of an error in the
    trading loop.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = _sqlite_file(parsed)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(
                    "daemon.database_url", f"cannot create the folder {path.parent}: {exc.strerror}"
                ) from None
        engine = create_engine(parsed)
        event.listen(engine, "connect", partial(_sqlite_on_connect, round(busy_timeout * 1000)))
        return engine
    return create_engine(parsed, pool_pre_ping=True)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to `engine`; objects stay readable after commit (the loop keeps using them)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    """An Alembic Config for `url` without an ini file.

    The URL travels in `config.attributes`, not in the ini-style options, because ConfigParser would
    treat a '%' in it (URL-encoded passwords, `options=-csearch_path%3D...`) as interpolation.
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at `url` forward to `revision` (default: the latest)."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Migrate the database at `url` back to `revision` ("base" removes every table)."""
    command.downgrade(alembic_config(url), revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None when it was never migrated."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revisions() -> tuple[str, ...]:
    """The latest revision(s) in `migrations/versions` (one unless branches were left unmerged)."""
    script = ScriptDirectory.from_config(alembic_config(""))
    return tuple(script.get_heads())


def schema_is_current(engine: Engine) -> bool:
    """True when the database is at the latest migration, so the daemon may start writing to it."""
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_heads()
    return set(current) == set(head_revisions())


def ensure_schema(url: str) -> None:
    """SQLite (the embedded default) is migrated on start; PostgreSQL is an operator's step."""
    engine = make_engine(url)
    try:
        if schema_is_current(engine):
            return
        if make_url(url).get_backend_name() != "sqlite":
            raise OperationalError(
                "database schema is not at the latest migration: run `paperbot db upgrade`"
            )
    finally:
        engine.dispose()
    upgrade(url)


def database_problem(exc: Exception, url: str, retried: float | None = None) -> PaperbotError:
    """A database failure in paperbot's terms, in one line without the password: a SQLite file that cannot
    be opened or written is the configuration's (exit 2); a server that does not answer, a dropped
    connection, a lock held too long (`retried` says for how many seconds it was retried) or a full disk
    is temporary (exit 3: systemd starts it again)."""
    parsed = make_url(url)
    cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    where = parsed.render_as_string(hide_password=True)
    fault = classify(exc)
    if parsed.get_backend_name() == "sqlite":
        if "unable to open database file" in cause:
            return ConfigError(
                "daemon.database_url", f"cannot open the SQLite database {parsed.database}: {cause}"
            )
        if fault is Fault.READ_ONLY:
            return ConfigError(
                "daemon.database_url",
                f"the SQLite database {parsed.database} is read-only ({cause}): the daemon's user must be"
                " able to write it and its folder",
            )
    if fault is Fault.DISK_FULL:
        return DatabaseFaultError(
            f"database error at {where}: {cause}; the disk is full: free space, then start again (it"
            " continues from the last batch recorded)"
        )
    if retried is not None:
        return DatabaseFaultError(f"database error at {where}: {cause} (still failing after {retried:.1f} s)")
    return DatabaseFaultError(f"database error at {where}: {cause}")
