"""Database faults while the daemon runs (issue 10, defect 3), on real databases and real processes.

A full disk is one line and exit code 3, and the next start, with space again, continues where the
journal stops; a read-only database file is one line and exit code 2.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import write_crypto_project
from sqlalchemy import create_engine, select, text
from sqlalchemy.pool import NullPool

from bot.cli import main
from bot.errors import ExitCode
from bot.store import models as m
from bot.store.db import make_engine, session_factory, upgrade

SPAN = 'end = "2018-01-25T06:00:00Z"'  # 72 five-minute batches after the replay start


def project(root: Path, db_url: str, model: Path, **daemon: float) -> Path:
    """The crypto project over SPAN, with extra [daemon] keys."""
    config = write_crypto_project(root, db_url, model, feed_extra=SPAN)
    keys = "".join(f"{key} = {value}\n" for key, value in daemon.items())
    config.write_text(config.read_text().replace("[daemon]\n", "[daemon]\n" + keys, 1))
    return config


def run(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, list[dict[str, Any]]]:
    """`paperbot run` in this process: exit code, stderr, and the JSON log events."""
    capsys.readouterr()
    code = main(["-c", str(config), "run"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, err, [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def book(db_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Everything a run records about its trading, in a comparable order."""
    engine = make_engine(db_url)
    try:
        with session_factory(engine)() as session:

            def rows(*columns: Any) -> list[tuple[Any, ...]]:
                return [tuple(r) for r in session.execute(select(*columns).order_by(*columns))]

            return {
                "fills": rows(m.Fill.ts, m.Fill.symbol, m.Fill.side, m.Fill.qty, m.Fill.price,
                              m.Fill.commission, m.Fill.client_order_id, m.Fill.broker_fill_id),
                "orders": rows(m.Order.client_order_id, m.Order.status, m.Order.qty, m.Order.filled_qty),
                "decisions": rows(m.RiskDecision.bar_ts, m.RiskDecision.symbol, m.RiskDecision.outcome,
                                  m.RiskDecision.approved_qty),
                "predictions": rows(m.Prediction.bar_ts, m.Prediction.symbol, m.Prediction.horizon,
                                    m.Prediction.predicted_return),
                "equity": rows(m.EquitySnapshot.ts, m.EquitySnapshot.kind, m.EquitySnapshot.equity),
                "positions": rows(m.Position.symbol, m.Position.qty),
                "market": rows(m.MarketState.symbol, m.MarketState.last_ts),
                "alerts": rows(m.Alert.ts, m.Alert.kind, m.Alert.message),
            }  # fmt: skip
    finally:
        engine.dispose()


def retries(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("event") == "database_retry"]


@pytest.fixture(scope="module")
def undisturbed(crypto_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Any]]:
    """The records of a run that no fault touched."""
    root = tmp_path_factory.mktemp("undisturbed")
    db_url = f"sqlite:///{root / 'db.sqlite'}"
    assert main(["-c", str(project(root, db_url, crypto_model)), "run"]) == 0
    records = book(db_url)
    assert len(records["fills"]) > 20
    return records


def test_a_read_only_database_file_is_one_line_and_exit_code_2(
    crypto_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "db.sqlite"
    upgrade(f"sqlite:///{db}")
    config = project(tmp_path, f"sqlite:///{db}", crypto_model)
    if os.geteuid() == 0:  # root writes through file modes: make the file immutable instead
        if shutil.which("chattr") is None:
            pytest.skip("running as root without chattr: a file cannot be made read-only for root")
        done = subprocess.run(["chattr", "+i", str(db)], capture_output=True, text=True, check=False)
        if done.returncode:
            pytest.skip(f"chattr +i failed on this file system: {done.stderr.strip()}")
    else:
        db.chmod(0o444)
    try:
        code, err, _ = run(config, capsys)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(db)], check=True)
    assert code == ExitCode.USER
    assert err.count("\n") == 1
    assert f"config error at daemon.database_url: the SQLite database {db} is read-only" in err


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB tmpfs mounted for the test (root only), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command to make a small file system")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here (root and CAP_SYS_ADMIN needed): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_is_one_line_and_nothing_half_written(
    crypto_model: Path,
    tmp_path: Path,
    small_disk: Path,
    capsys: pytest.CaptureFixture[str],
    undisturbed: dict[str, list[Any]],
) -> None:
    db = small_disk / "db.sqlite"
    db_url = f"sqlite:///{db}"
    upgrade(db_url)
    filler = small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(b"\0" * (free - 1_500_000))  # room for some batches, not for the run
    config = project(tmp_path, db_url, crypto_model)
    code, err, events = run(config, capsys)
    assert code == ExitCode.TEMPORARY
    assert err.count("\n") == 1
    assert err.startswith(
        f"paperbot: database error at {db_url}: database or disk is full; the disk is full:"
    )
    assert retries(events) == []  # waiting does not free space

    records = book(db_url)  # it opens, and what it holds is whole
    engine = create_engine(db_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA integrity_check")).scalar() == "ok"
    finally:
        engine.dispose()
    assert 0 < len(records["fills"]) < len(undisturbed["fills"])
    assert set(records["fills"]) <= set(undisturbed["fills"])
    last = max(ts for _, ts in records["market"])
    assert records["predictions"] == [p for p in undisturbed["predictions"] if p[0] <= last]

    filler.unlink()  # space again: the next start continues from the last batch recorded
    code, err, _ = run(config, capsys)
    assert code == ExitCode.DONE, err
    assert book(db_url) == undisturbed
