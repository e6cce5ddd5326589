"""Engines, sessions and schema migrations for SQLite (single host, WAL) and PostgreSQL.

Alembic is imported by the migration functions themselves: it is a tenth of a second that the report
commands, which only read, never need, and that `schema_is_current` spares on a database already at
the latest migration."""

from __future__ import annotations

import ast
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

import bot
from bot.errors import ConfigError, DatabaseFaultError, OperationalError, PaperbotError
from bot.store.faults import Fault, classify

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(bot.__file__).resolve().parent.parent / "migrations"
"""The Alembic script directory (env.py, versions/) at the repository root."""

VERSION_TABLE = "alembic_version"  # Alembic's default: env.py does not rename it

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
    from alembic.config import Config  # noqa: PLC0415

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at `url` forward to `revision` (default: the latest)."""
    from alembic import command  # noqa: PLC0415

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Migrate the database at `url` back to `revision` ("base" removes every table)."""
    from alembic import command  # noqa: PLC0415

    command.downgrade(alembic_config(url), revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None when it was never migrated."""
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revisions() -> tuple[str, ...]:
    """The latest revision(s) in `migrations/versions` (one unless branches were left unmerged)."""
    from alembic.script import ScriptDirectory  # noqa: PLC0415

    script = ScriptDirectory.from_config(alembic_config(""))
    return tuple(script.get_heads())


def schema_is_current(engine: Engine) -> bool:
    """True when the database is at the latest migration, so the daemon may start writing to it."""
    heads = literal_heads()
    with engine.connect() as connection:
        if heads is not None and _stamped_heads(connection) == heads:
            return True  # the usual answer, found without loading Alembic
        from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

        current = MigrationContext.configure(connection).get_current_heads()
    return set(current) == set(head_revisions())


def _stamped_heads(connection: Connection) -> frozenset[str] | None:
    """The revisions in the database's version table (as Alembic reads them), None without the table."""
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    return frozenset(connection.scalars(text(f"SELECT version_num FROM {VERSION_TABLE}")))


def literal_heads(versions: Path = MIGRATIONS_DIR / "versions") -> frozenset[str] | None:
    """The head revisions of the scripts in `versions`, read from their literal `revision` and
    `down_revision` without importing Alembic or the scripts; None when a script is not that plain, or
    there is none, so that only Alembic's own reading (`head_revisions`) decides those cases."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in versions.glob("*.py"):
        if path.name.startswith(("__init__", ".#")):  # the files Alembic skips
            continue
        ids = _literal_ids(path)
        if ids is None:
            return None
        revision, down = ids["revision"], ids["down_revision"]
        if not isinstance(revision, str):
            return None
        revisions.add(revision)
        if isinstance(down, str):
            parents.add(down)
        elif isinstance(down, tuple | list) and all(isinstance(d, str) for d in down):
            parents.update(down)
        elif down is not None:
            return None
    return frozenset(revisions - parents) if revisions else None


_SCRIPT_IDS = ("revision", "down_revision")


def _literal_ids(path: Path) -> dict[str, object] | None:
    """`revision` and `down_revision` of one script when each is bound once, at module level, to a
    literal; None otherwise (missing, bound in a branch or a loop, computed, or the file does not
    parse)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    bound = sum(
        isinstance(node, ast.Name) and node.id in _SCRIPT_IDS and not isinstance(node.ctx, ast.Load)
        for node in ast.walk(tree)
    )
    ids: dict[str, object] = {}
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target, value = statement.targets[0], statement.value
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            target, value = statement.target, statement.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in _SCRIPT_IDS:
            if target.id in ids:
                return None
            try:
                ids[target.id] = ast.literal_eval(value)
            except (ValueError, TypeError, SyntaxError, RecursionError):
                return None
    return ids if len(ids) == bound == len(_SCRIPT_IDS) else None


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
