"""Run the real `paperbot` CLI, but SIGKILL the process at the n-th occurrence of a named point.

    python -m tests.crash_runner POINT N -- -c CONFIG run

No hook exists in production code for this: the runner wraps the real functions (the journal's batch
write, the simulated broker's submit, Alembic's schema operations) before it calls `bot.cli.main`, and
the wrapper kills its own process with SIGKILL, which nothing can catch or clean up after. The points:

* ``intent``: right after the commit of a batch that wrote order intents, before any of them is sent;
* ``accepted``: right after the broker accepted an order, before its answer is journaled;
* ``fill-pending``: a batch carrying fills, just before its commit (the fill exists at the broker only);
* ``fill``: right after the commit of a batch carrying fills;
* ``migration``: before the n-th schema operation of the start-up migration of a fresh database.

The harness (tests/test_crash_equivalence.py) restarts the daemon after each kill and compares the book
with an uninterrupted run's.
"""

from __future__ import annotations

import functools
import itertools
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from alembic.operations import Operations

from bot.brokers.sim import SimBroker
from bot.cli import main
from bot.journal import BatchRecord, Journal
from bot.orders import BrokerOrder, OrderIntent, OrderStatus

POINTS = ("intent", "accepted", "fill-pending", "fill", "migration")
# The schema operations a migration is made of (as tests/test_migrations.py counts them).
SCHEMA_STEPS = ("create_table", "create_index", "execute", "add_column")


def die(point: str, n: int) -> None:
    """Say where, then SIGKILL this process: no finally block, atexit hook or flush runs after it."""
    print(f"crash_runner: SIGKILL at {point} #{n}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def _has_intents(batch: BatchRecord) -> bool:
    return any(d.intent is not None for d in batch.decisions)


def _has_fills(batch: BatchRecord) -> bool:
    return any(u.fill is not None for u in batch.updates)


def arm(point: str, n: int) -> None:
    """Wrap the function of `point` so that its n-th occurrence kills the process."""
    if point not in POINTS:
        raise SystemExit(f"crash_runner: unknown point {point!r}; one of {', '.join(POINTS)}")
    counter = itertools.count(1)

    def hit() -> None:
        if next(counter) == n:
            die(point, n)

    if point in ("intent", "fill-pending", "fill"):
        record_batch = Journal.record_batch
        matches = _has_intents if point == "intent" else _has_fills

        @functools.wraps(record_batch)
        def wrapped_record(self: Journal, batch: BatchRecord) -> None:
            if point == "fill-pending" and matches(batch):
                hit()
            record_batch(self, batch)
            if point != "fill-pending" and matches(batch):
                hit()

        Journal.record_batch = wrapped_record  # type: ignore[method-assign]
    elif point == "accepted":
        submit = SimBroker.submit

        @functools.wraps(submit)
        async def wrapped_submit(self: SimBroker, intent: OrderIntent) -> BrokerOrder:
            order = await submit(self, intent)
            if order.status is OrderStatus.NEW and order.broker_order_id is not None:
                hit()
            return order

        SimBroker.submit = wrapped_submit  # type: ignore[method-assign]
    else:
        for name in SCHEMA_STEPS:
            original: Callable[..., Any] = getattr(Operations, name)

            def step(
                self: Operations, *args: Any, _original: Callable[..., Any] = original, **kw: Any
            ) -> Any:
                hit()
                return _original(self, *args, **kw)

            setattr(Operations, name, step)


def run(argv: Sequence[str]) -> int:
    """`POINT N -- PAPERBOT ARGS`: arm the point, then the real CLI."""
    if len(argv) < 3 or argv[2] != "--":
        raise SystemExit("usage: python -m tests.crash_runner POINT N -- PAPERBOT ARGS")
    arm(argv[0], int(argv[1]))
    return main(list(argv[3:]))


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
