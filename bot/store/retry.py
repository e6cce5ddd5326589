"""Redo a database call after a temporary fault, with backoff, without freezing the event loop.

Each call the daemon makes to the database is one transaction (a batch, an alert, a read) built from what
is already in memory. A temporary fault (see `bot.store.faults`) rolls the transaction back, so redoing
the call writes everything exactly once. The wait between tries is an asyncio sleep: the loop keeps
serving signals and the systemd watchdog meanwhile. A fault that lasts longer than the policy allows, or
that is still there `stop_grace_seconds` after a stop was requested, ends the call with
`DatabaseFaultError` (exit code 3); a full disk or a read-only database ends it at once.

On PostgreSQL a connection can drop while a COMMIT is in flight, and then nobody knows whether it landed.
Before each commit on the engine (a Session's or a bare Connection's) the transaction's id is noted
(`txid_current_if_assigned()`); before a write is redone, `txid_status()` says whether that commit landed,
so a write is never recorded twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from bot.errors import DatabaseFaultError
from bot.logs import get_logger
from bot.store.db import database_problem
from bot.store.faults import CommitUndecided, Fault, classify

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long a fault may last, and how the waits between tries grow (doubling from `first_delay`)."""

    give_up_seconds: float = 300.0
    first_delay: float = 0.05
    max_delay: float = 5.0
    # After a stop request a fault gets this much longer (a blip while the batch in hand is recorded),
    # well inside systemd's TimeoutStopSec (60 s).
    stop_grace_seconds: float = 2.0


class DatabaseRetry:
    """Runs database calls of one sessionmaker, each redone whole after a temporary fault."""

    def __init__(self, url: str, policy: RetryPolicy, sessions: sessionmaker[Session]) -> None:
        self._url = url
        self._policy = policy
        self._sessions = sessions
        self._xid: int | None = None  # the id of the transaction the last commit was about to commit
        self._waiting = 0
        self._log = get_logger("paperbot.database")
        if make_url(url).get_backend_name() == "postgresql":
            # On the engine, not the sessions: the journal writes its batches on a Connection of its own.
            engine: Engine = sessions.kw["bind"]
            event.listen(engine, "commit", self._note_xid)

    @property
    def waiting(self) -> bool:
        """True while a call waits between two tries: what is in memory is not all recorded."""
        return self._waiting > 0

    def _note_xid(self, connection: Connection) -> None:
        # Called just before the COMMIT is sent, a Session's flush done: a transaction that wrote anything
        # has its id already.
        self._xid = connection.exec_driver_sql("SELECT txid_current_if_assigned()").scalar()

    def _committed(self, xid: int) -> bool:
        """Whether the transaction `xid`, whose COMMIT lost its answer, did commit."""
        with self._sessions() as session:
            status = session.scalar(text("SELECT txid_status(:xid)"), {"xid": xid})
        if status == "committed":
            self._log.warning("database_commit_landed", xid=xid)
            return True
        if status == "aborted":
            return False
        raise CommitUndecided(f"the outcome of transaction {xid} is not known yet ({status})")

    async def call(self, what: str, fn: Callable[[], T], stop: asyncio.Event | None = None) -> T:
        """`fn()`, a read or a write that may be repeated (it checks before it inserts), redone as is
        after a temporary fault. `what` names it in the log; `stop` shortens the retries to the grace."""
        return await self._retry(what, fn, stop)

    async def write_once(
        self, what: str, fn: Callable[[], object], stop: asyncio.Event | None = None
    ) -> None:
        """`fn()`, one transaction that must be recorded exactly once, redone after a temporary fault unless
        its lost COMMIT did land."""
        unknown: int | None = None  # a transaction whose COMMIT lost its answer

        def attempt() -> None:
            nonlocal unknown
            if unknown is not None:
                if self._committed(unknown):
                    return
                unknown = None
            self._xid = None
            try:
                fn()
            except BaseException:
                unknown = self._xid  # set only if the failure came during or after the COMMIT was sent
                raise

        await self._retry(what, attempt, stop)

    async def _retry(self, what: str, fn: Callable[[], T], stop: asyncio.Event | None) -> T:
        policy = self._policy
        attempt, delay = 0, policy.first_delay
        first_fault: float | None = None
        stopped_at: float | None = None
        deadline = float("inf")
        while True:
            attempt += 1
            try:
                result = fn()
            except (SQLAlchemyError, CommitUndecided) as exc:
                fault = classify(exc)
                if fault is Fault.OTHER:
                    raise
                if fault is not Fault.TEMPORARY:
                    raise database_problem(exc, self._url) from exc
                now = time.monotonic()
                if first_fault is None:
                    first_fault, deadline = now, now + policy.give_up_seconds
                if stop is not None and stop.is_set():
                    stopped_at = stopped_at or now
                    deadline = min(deadline, stopped_at + policy.stop_grace_seconds)
                if now >= deadline:
                    problem = database_problem(exc, self._url, retried=now - first_fault)
                    if stopped_at is not None:
                        problem = DatabaseFaultError(f"{problem}; stopped (asked to) before it was recorded")
                    self._log.error("database_gave_up", what=what, attempts=attempt, **_describe(exc))
                    raise problem from exc
                wait = min(delay, deadline - now)
                self._log.warning(
                    "database_retry", what=what, attempt=attempt, retry_in=round(wait, 3), **_describe(exc)
                )
                self._waiting += 1
                try:
                    await _sleep(wait, stop)
                finally:
                    self._waiting -= 1
                delay = min(delay * 2, policy.max_delay)
                continue
            if first_fault is not None:
                self._log.info(
                    "database_recovered",
                    what=what,
                    attempts=attempt,
                    seconds=round(time.monotonic() - first_fault, 3),
                )
            return result


def _describe(exc: Exception) -> dict[str, str | None]:
    """The error's class, code and first line for the log: the driver's words, never the URL."""
    orig = getattr(exc, "orig", None) or exc
    code = getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None)
    lines = str(orig).strip().splitlines()
    return {"error": type(orig).__name__, "code": code, "message": lines[0] if lines else ""}


async def _sleep(seconds: float, stop: asyncio.Event | None) -> None:
    """Sleep, cut short by a stop request (which then gets its grace)."""
    if stop is None or stop.is_set():
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
