"""Migrations are atomic: a migration that stops part-way (an error, a kill) leaves the database at the
version before it, never between, and the next `db upgrade` completes it."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.operations import Operations
from helpers import REPO
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from bot.store.db import current_revision, downgrade, head_revisions, make_engine, upgrade

STEPS = ("create_table", "create_index", "execute", "add_column")


class InterruptError(RuntimeError):
    """Raised by the n-th schema operation of a migration run."""


@pytest.fixture
def interrupt_at(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Make the n-th schema operation of the next upgrade raise (set the list's one item to n)."""
    at = [0]
    counter = itertools.count(1)
    for name in STEPS:
        original = getattr(Operations, name)

        def step(self: Operations, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            if next(counter) == at[0]:
                raise InterruptError(f"interrupted at schema operation {at[0]}")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Operations, name, step)
    yield at


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        return current_revision(engine)
    finally:
        engine.dispose()


# The schema operations of an upgrade from nothing, in order: 0001 has the first 20 (tables and their
# indexes), 0002 the next two, 0003 two UPDATEs, 0004 one table (0005 is a batch operation: not counted).
@pytest.mark.parametrize(
    ("n", "before"),
    [
        (1, None),
        (2, None),
        (12, None),
        (20, None),
        (21, "0001"),
        (22, "0001"),
        (23, "0002"),
        (24, "0002"),
        (25, "0003"),
    ],
)
def test_a_migration_stopped_part_way_leaves_the_previous_version(
    db_url: str, interrupt_at: list[int], n: int, before: str | None
) -> None:
    """Stopped at any schema operation, the database is exactly at the version before that migration,
    and the next upgrade goes through."""
    interrupt_at[0] = n
    with pytest.raises(InterruptError):
        upgrade(db_url)
    assert revision(db_url) == before
    if before is None:
        assert tables(db_url) == set()
    elif before == "0001":
        assert "trading_state_events" not in tables(db_url)
    interrupt_at[0] = 0
    upgrade(db_url)
    assert revision(db_url) == head_revisions()[0]
    assert "trading_state_events" in tables(db_url)


def test_db_upgrade_killed_at_many_instants_leaves_a_database_that_opens(tmp_path: Path) -> None:
    """SIGKILL `paperbot db upgrade` at instants spread over the 60 ms after it creates the database file,
    where the migrations run: each time the database is at a version (none, or a migration's) and the
    next upgrade completes it. PAPERBOT_MIGRATION_KILLS sets how many (4 in the suite)."""
    db = tmp_path / "db.sqlite"
    config = tmp_path / "config.toml"
    config.write_text(
        f'[daemon]\ndatabase_url = "sqlite:///{db}"\n[feed]\ndata_dir = "{tmp_path}"\n'
        f'[[strategies]]\nname = "s"\nsymbols = ["X"]\nmodel_dir = "{tmp_path}"\n'
    )
    command = [sys.executable, "-m", "bot", "-c", str(config), "db", "upgrade"]
    url = f"sqlite:///{db}"
    kills = int(os.environ.get("PAPERBOT_MIGRATION_KILLS", "4"))
    for k in range(kills):
        for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            path.unlink(missing_ok=True)
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not db.exists() and proc.poll() is None:
            time.sleep(0.001)
        time.sleep(0.06 * k / max(1, kills - 1))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        at = revision(url)
        assert at in (None, "0001", "0002", "0003", "0004", "0005"), at
        if at is None:
            assert tables(url) == set()
        upgrade(url)
        assert revision(url) == head_revisions()[0]


PREDICTION = (
    "INSERT INTO predictions (book_id, run_id, strategy, symbol, bar_ts, horizon, predicted_return,"
    " target_weight) VALUES (1, 1, 's', :symbol, :ts, 1, 0.25, 0.5)"
)


def test_0005_keeps_the_predictions_and_their_uniqueness(db_url: str) -> None:
    """Predictions written before 0005 are there after it (and after its downgrade); a repeat of one is
    still refused."""
    upgrade(db_url, "0004")
    engine = make_engine(db_url)
    stamp = "2024-01-02 00:00:00"
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO books (name, kind, starting_cash, created_at) VALUES ('b', 'daemon', 1, :ts)"
                ),
                {"ts": stamp},
            )
            connection.execute(
                text(
                    "INSERT INTO runs (book_id, command, started_at, status, config_sha256)"
                    " VALUES (1, 'run', :ts, 'running', 'x')"
                ),
                {"ts": stamp},
            )
            for symbol in ("A", "B"):
                connection.execute(text(PREDICTION), {"symbol": symbol, "ts": stamp})

        def symbols() -> list[str]:
            with engine.connect() as connection:
                return list(connection.scalars(text("SELECT symbol FROM predictions ORDER BY id")))

        upgrade(db_url)
        assert symbols() == ["A", "B"]
        unique = inspect(engine).get_unique_constraints("predictions")
        assert [u["column_names"] for u in unique] == [["book_id", "bar_ts", "strategy", "symbol", "horizon"]]
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.execute(text(PREDICTION), {"symbol": "A", "ts": stamp})
        downgrade(db_url, "0004")
        assert symbols() == ["A", "B"]
        upgrade(db_url)
        assert symbols() == ["A", "B"]
    finally:
        engine.dispose()
