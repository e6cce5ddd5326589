"""Database faults while the daemon runs (issue 10, defect 3), on real databases and real processes.

A temporary fault (a lock held by another process past the busy timeout, backends terminated mid-batch)
is waited out and the run ends with exactly the records of an undisturbed run; a fault that outlives
`database_retry_seconds`, or a stop that comes during one, ends the run with one line and exit code 3,
and the next start continues where the journal stops; a full disk is one line and exit code 3; a
read-only database file is one line and exit code 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO, write_crypto_project
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool
from structlog.testing import capture_logs

from bot.alerts import Alert, AlertKind, Severity
from bot.cli import main
from bot.errors import ExitCode
from bot.journal import Journal
from bot.store import models as m
from bot.store.db import make_engine, session_factory, upgrade
from bot.store.retry import DatabaseRetry, RetryPolicy

SPAN = 'end = "2018-01-25T06:00:00Z"'  # 72 five-minute batches after the replay start

# The second process: waits until the daemon has recorded a fill, takes SQLite's write lock and holds it
# for argv[2] seconds, or until a line (or EOF) on stdin when argv[2] is "stdin".
HOLDER = r"""
import sqlite3, sys, time
path, hold = sys.argv[1], sys.argv[2]
while True:
    try:
        connection = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=0.05, isolation_level=None)
        if connection.execute("SELECT count(*) FROM fills").fetchone()[0]:
            break
        connection.close()
    except sqlite3.Error:
        pass
    time.sleep(0.01)
connection.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
if hold == "stdin":
    sys.stdin.readline()
else:
    time.sleep(float(hold))
connection.execute("ROLLBACK")
print("released", flush=True)
"""


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


def holder(db: Path, hold: str) -> subprocess.Popen[str]:
    """A second process that takes the database's write lock once the daemon has filled an order."""
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db), hold],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_a_lock_held_past_the_busy_timeout_is_waited_out(
    crypto_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    undisturbed: dict[str, list[Any]],
) -> None:
    db = tmp_path / "db.sqlite"
    config = project(
        tmp_path,
        f"sqlite:///{db}",
        crypto_model,
        database_busy_timeout_seconds=0.2,
        database_retry_seconds=30,
    )
    lock = holder(db, "1.5")
    try:
        code, err, events = run(config, capsys)
    finally:
        out, _ = lock.communicate(timeout=30)
    assert out.split() == ["locked", "released"]
    assert code == ExitCode.DONE, err
    waits = retries(events)
    assert len(waits) >= 2, "the lock was held for 1.5 s against a 0.2 s busy timeout"
    assert {(w["error"], w["code"]) for w in waits} == {("OperationalError", "SQLITE_BUSY")}
    assert waits[0]["attempt"] == 1
    assert any(e["event"] == "database_recovered" for e in events)
    assert book(f"sqlite:///{db}") == undisturbed


def test_a_fault_that_outlives_its_retries_is_one_line_and_the_next_start_continues(
    crypto_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    undisturbed: dict[str, list[Any]],
) -> None:
    db = tmp_path / "db.sqlite"
    db_url = f"sqlite:///{db}"
    config = project(
        tmp_path, db_url, crypto_model, database_busy_timeout_seconds=0.2, database_retry_seconds=1
    )
    lock = holder(db, "stdin")
    try:
        code, err, events = run(config, capsys)
    finally:
        out, _ = lock.communicate("release\n", timeout=30)
    assert out.split() == ["locked", "released"]
    assert code == ExitCode.TEMPORARY
    assert err.count("\n") == 1
    assert err.startswith(f"paperbot: database error at {db_url}: database is locked (still failing after 1.")
    assert len(retries(events)) >= 2
    assert [e["what"] for e in events if e["event"] == "database_gave_up"] == ["record_batch"]
    partial = book(db_url)
    assert 0 < len(partial["fills"]) < len(undisturbed["fills"])

    code, err, _ = run(config, capsys)  # systemd starts it again: it continues from the last batch recorded
    assert code == ExitCode.DONE, err
    assert book(db_url) == undisturbed


def test_a_stop_during_a_long_fault_ends_the_daemon_at_once(crypto_model: Path, tmp_path: Path) -> None:
    """SIGTERM while a batch waits for a lock (retries allowed for a minute): the loop still hears it, and
    the daemon is gone within the stop grace, with one line and exit code 3."""
    db = tmp_path / "db.sqlite"
    config = project(
        tmp_path,
        f"sqlite:///{db}",
        crypto_model,
        database_busy_timeout_seconds=0.2,
        database_retry_seconds=60,
    )
    lock = holder(db, "stdin")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "bot", "-c", str(config), "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert daemon.stdout is not None
        for line in daemon.stdout:
            if json.loads(line)["event"] == "database_retry":
                break
        daemon.send_signal(signal.SIGTERM)
        asked = time.monotonic()
        _, err = daemon.communicate(timeout=30)
        took = time.monotonic() - asked
    finally:
        if daemon.poll() is None:
            daemon.kill()
        lock.communicate("release\n", timeout=30)
    assert daemon.returncode == ExitCode.TEMPORARY, err
    assert err.count("\n") == 1
    assert "database is locked" in err
    assert "stopped (asked to) before it was recorded" in err
    assert took < 5, "the stop grace is 2 s"


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


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_postgres_backends_terminated_mid_run_change_nothing(
    db_url: str,
    crypto_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    undisturbed: dict[str, list[Any]],
) -> None:
    """Another connection terminates the daemon's backends (pg_terminate_backend) each time it sees the run
    moved on (a later last bar): the run completes with the same records as an undisturbed one, none
    missing and none twice."""
    name = f"paperbot-{uuid.uuid4().hex[:12]}"
    url = make_url(db_url).update_query_dict({"application_name": name}).render_as_string(hide_password=False)
    config = project(tmp_path, url, crypto_model, database_retry_seconds=30)
    upgrade(url)
    admin = create_engine(db_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    done = threading.Event()
    killed: list[int] = []

    def terminate() -> None:
        # Paced by the run's progress, not by the clock: a faster run still gets its share of kills.
        last = None
        with admin.connect() as connection:
            while not done.wait(0.005):
                progress = connection.execute(text("SELECT max(last_ts) FROM market_state")).scalar()
                if progress == last:
                    continue
                last = progress
                killed.append(
                    connection.execute(
                        text(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                            " WHERE application_name = :name"
                        ),
                        {"name": name},
                    ).scalar_one()
                )

    killer = threading.Thread(target=terminate)
    killer.start()
    try:
        code, err, events = run(config, capsys)
    finally:
        done.set()
        killer.join()
        admin.dispose()
    assert code == ExitCode.DONE, err
    assert sum(killed) >= 5
    # Ended mid-statement (57P01 admin_shutdown) or between two ("server closed the connection").
    assert retries(events)
    assert {w["code"] for w in retries(events)} <= {"57P01", None}
    assert book(url) == undisturbed


class CommitCutter:
    """A TCP proxy to PostgreSQL on loopback. Once armed, it lets the next COMMIT reach the server and
    drops the connection instead of passing the server's answer on: the commit lands, the client sees a
    broken connection and cannot know it did."""

    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.armed = threading.Event()
        self.cut = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._upstream)
            cutting = threading.Event()
            for args in ((client, server, True, cutting), (server, client, False, cutting)):
                threading.Thread(target=self._pump, args=args, daemon=True).start()

    def _pump(
        self, source: socket.socket, sink: socket.socket, upstream: bool, cutting: threading.Event
    ) -> None:
        try:
            while data := source.recv(65536):
                if upstream and self.armed.is_set() and b"COMMIT" in data:
                    self.armed.clear()
                    cutting.set()  # before the COMMIT goes on, so the answer cannot slip through
                elif not upstream and cutting.is_set():
                    self.cut.set()
                    return  # the answer to the COMMIT: dropped, with the connection
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_commit_whose_answer_was_lost_is_not_written_twice(db_url: str) -> None:
    """The connection drops after the server committed and before the client heard it: the retry asks the
    server what became of that transaction (txid_status) instead of writing the alert again."""
    upgrade(db_url)
    direct = make_url(db_url)
    proxy = CommitCutter(direct.host or "127.0.0.1", direct.port or 5432)
    url = direct.set(host="127.0.0.1", port=proxy.port).update_query_dict({"sslmode": "disable"})
    engine = make_engine(url.render_as_string(hide_password=False))
    try:
        sessions = session_factory(engine)
        database = DatabaseRetry(url.render_as_string(hide_password=False), RetryPolicy(10), sessions)
        journal = Journal(sessions, Journal.open_book(sessions, "cut", "daemon", Decimal(100)))
        alert = Alert(datetime(2018, 1, 25, tzinfo=UTC), Severity.WARNING, AlertKind.FEED_PROBLEM, "once")
        proxy.armed.set()
        with capture_logs() as logs:
            asyncio.run(database.write_once("record_alerts", lambda: journal.record_alerts([alert])))
        assert proxy.cut.is_set()
        with sessions() as session:
            assert session.scalars(select(m.Alert.message)).all() == ["once"]
        events = [e["event"] for e in logs]
        assert events == ["database_retry", "database_commit_landed", "database_recovered"]
    finally:
        engine.dispose()
        proxy.close()
