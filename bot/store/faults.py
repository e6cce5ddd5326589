"""What kind of database failure an exception is, which decides what the daemon does about it.

- temporary: SQLite busy or locked past the busy timeout; on PostgreSQL a connection lost or reset, the
  server shutting down or starting up, an administrator's `pg_terminate_backend`, a serialization failure
  or a deadlock; any connection the driver reports as gone. The transaction was rolled back: redo it.
- disk full: SQLite "database or disk is full", PostgreSQL `disk_full` or "No space left on device".
  Nothing can be recorded until someone frees space: stop with one line.
- read-only: SQLite "attempt to write a readonly database": a permission to fix, not a fault to wait out.
- anything else (a constraint, a missing table, a bad statement) is not retried.
"""

from __future__ import annotations

import sqlite3
from enum import StrEnum

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import OperationalError as SAOperationalError


class Fault(StrEnum):
    """The kinds of database failure the daemon tells apart."""

    TEMPORARY = "temporary"
    DISK_FULL = "disk_full"
    READ_ONLY = "read_only"
    OTHER = "other"


class CommitUndecided(Exception):  # noqa: N818  (a state to wait out, not an error to report)
    """PostgreSQL still reports a transaction whose COMMIT lost its answer as in progress: ask again."""


# Primary result codes (the low byte of an extended code): https://sqlite.org/rescode.html
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY, _SQLITE_FULL = 5, 6, 8, 13

# SQLSTATEs: https://www.postgresql.org/docs/current/errcodes-appendix.html
_PG_TEMPORARY = frozenset(
    {
        "57P01",  # admin_shutdown: pg_terminate_backend, or a fast shutdown
        "57P02",  # crash_shutdown: another backend crashed, the server is resetting
        "57P03",  # cannot_connect_now: the database system is starting up or shutting down
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available
        "53300",  # too_many_connections
    }
)
_PG_DISK_FULL = "53100"
# What libpq says when the server answered a connection attempt with a refusal of the URL's user,
# password or database (psycopg gives connection failures no SQLSTATE).
_REFUSALS = ("authentication failed", "does not exist", "no pg_hba.conf entry")


def classify(exc: BaseException) -> Fault:
    """The kind of database failure `exc` is (OTHER for anything that is not a database failure)."""
    if isinstance(exc, CommitUndecided):
        return Fault.TEMPORARY
    if not isinstance(exc, DBAPIError):
        return Fault.OTHER
    orig = exc.orig
    if isinstance(orig, sqlite3.Error):
        code = (getattr(orig, "sqlite_errorcode", None) or 0) & 0xFF
        if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return Fault.TEMPORARY
        if code == _SQLITE_FULL:
            return Fault.DISK_FULL
        if code == _SQLITE_READONLY:
            return Fault.READ_ONLY
        return Fault.TEMPORARY if exc.connection_invalidated else Fault.OTHER
    sqlstate = getattr(orig, "sqlstate", None)
    # The server maps ENOSPC to disk_full where it writes files, but an I/O error can carry the text only.
    if sqlstate == _PG_DISK_FULL or "No space left on device" in str(orig):
        return Fault.DISK_FULL
    if sqlstate in _PG_TEMPORARY or (sqlstate or "").startswith("08") or exc.connection_invalidated:
        return Fault.TEMPORARY
    # A driver's OperationalError without a SQLSTATE: the connection failed or broke mid-statement ("server
    # closed the connection unexpectedly"), unless the server refused who we are, which waiting won't fix.
    if sqlstate is None and isinstance(exc, SAOperationalError):
        refused = any(text in str(orig) for text in _REFUSALS)
        return Fault.OTHER if refused else Fault.TEMPORARY
    return Fault.OTHER
