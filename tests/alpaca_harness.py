"""The whole daemon against the fake Alpaca: real BTC minute bars (tests/data/crypto-1m: Binance's BTCUSDT
perpetual, 2022-01-24 to 01-29, traded here as Alpaca's BTC/USD), a small model trained on the 5-minute
bars of their first four days, a
config pointing every URL at the fake, and the daemon run as `python -m bot run` with its JSON log read
line by line."""

from __future__ import annotations

import csv
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fake_alpaca import FakeAlpaca, MinuteBar
from helpers import REPO, TESTS
from sqlalchemy import select

from bot.store.db import make_engine, session_factory

BTC_1M = TESTS / "data" / "crypto-1m" / "BTCUSD.csv"
KEY, SECRET = "PKTESTKEYID0123456789", "sEcReT-test-5c8f1e0d9b2a4f6e8d7c"
MINUTE = timedelta(minutes=1)
FIVE = timedelta(minutes=5)


def btc_minutes() -> list[tuple[float, float, float, float, float]]:
    """Every minute of the file as (open, high, low, close, volume), oldest first."""
    with BTC_1M.open(newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    return [(float(o), float(h), float(lo), float(c), float(v)) for _, o, h, lo, c, v in rows]


def minute_bars(rows: Sequence[tuple[float, float, float, float, float]], first: datetime) -> list[MinuteBar]:
    """The rows as minute bars from `first` on, one a minute."""
    return [MinuteBar(first + i * MINUTE, o, h, lo, c, v) for i, (o, h, lo, c, v) in enumerate(rows)]


def write_btc_5m(rows: Sequence[tuple[float, float, float, float, float]], path: Path) -> None:
    """Five-minute bars of the rows (which start at the file's first minute, 2022-01-24 00:00 UTC), built
    the way the feed builds them."""
    start = datetime(2022, 1, 24, tzinfo=UTC)
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["timestamp", "open", "high", "low", "close", "volume"])
        for i in range(0, len(rows) - len(rows) % 5, 5):
            chunk = rows[i : i + 5]
            ts = (start + i * MINUTE).isoformat().replace("+00:00", "Z")
            out.writerow(
                [
                    ts,
                    chunk[0][0],
                    max(r[1] for r in chunk),
                    min(r[2] for r in chunk),
                    chunk[-1][3],
                    sum(r[4] for r in chunk),
                ]
            )


STRATEGY = """
[[strategies]]
name = "btc"
symbols = ["{symbol}"]
timeframe = "5m"
model_dir = "{model_dir}"
full_signal_return = 0.0005
allow_short = false
rebalance_band = 0.05

[strategies.features]
return_lags = [1, 3]
zscore_window = 12
rsi_window = 8
volatility_window = 12

[strategies.model]
window = 8
hidden = 8
layers = 1
dropout = 0.0

[strategies.training]
epochs = 12
batch_size = 128
seed = 5

[strategies.risk]
max_drawdown = 0.5
max_position_fraction = 0.5
max_order_notional = 60000
max_bar_age_seconds = {max_age}
lot_size = 0.0001
"""


def training_config(root: Path, data_dir: Path, model_dir: Path) -> Path:
    """A replay config over the 5-minute bars, for `paperbot train` (symbol BTCUSD: a file name)."""
    path = root / "train.toml"
    path.write_text(
        f'[daemon]\ndatabase_url = "sqlite:///{root / "train.sqlite"}"\n'
        f'[feed]\nkind = "replay"\ndata_dir = "{data_dir}"\nstart = "2022-01-28T00:00:00Z"\n'
        + STRATEGY.format(symbol="BTCUSD", model_dir=model_dir, max_age=600)
    )
    return path


def live_config(
    root: Path,
    fake: FakeAlpaca,
    model_dir: Path,
    *,
    feed: str = "",
    broker: str = "",
    daemon: str = "",
    max_age: float = 600,
    feed_kind: str = "alpaca",
    broker_kind: str = "alpaca",
) -> Path:
    """The daemon's config: every Alpaca URL at the fake."""
    feed_table = (
        f'kind = "alpaca"\nasset_class = "crypto"\nstream_url = "{fake.data_stream_url}"\n'
        f'rest_url = "{fake.rest_url}"\nclock_url = "{fake.rest_url}"\ngrace_seconds = 2\n'
        # The tests publish minutes faster than they pass: the venue's clock runs ahead of the host's.
        f"max_clock_skew_seconds = 1e9\n{feed}"
        if feed_kind == "alpaca"
        else feed
    )
    broker_table = (
        f'kind = "alpaca"\nurl = "{fake.rest_url}"\nstream_url = "{fake.trading_stream_url}"\n{broker}'
        if broker_kind == "alpaca"
        else broker
    )
    path = root / "config.toml"
    path.write_text(
        f'[daemon]\ndatabase_url = "sqlite:///{root / "db.sqlite"}"\nbatch_linger_seconds = 0.5\n{daemon}\n'
        f"[feed]\n{feed_table}\n[broker]\n{broker_table}\n"
        "[reconciliation]\ninterval_seconds = 3\nsettle_seconds = 0.5\n"
        + STRATEGY.format(symbol="BTC/USD", model_dir=model_dir, max_age=max_age)
    )
    return path


def keyed_env() -> dict[str, str]:
    """The test's environment with the (fake) Alpaca keys set, as a user's systemd unit would."""
    return {**os.environ, "APCA_API_KEY_ID": KEY, "APCA_API_SECRET_KEY": SECRET, "PYTHONUNBUFFERED": "1"}


class Daemon:
    """`python -m bot -c CONFIG run` in a child process, its JSON log lines collected as they come."""

    def __init__(self, config: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot", "-c", str(config), *(args or ("run",))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=keyed_env(),
        )
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._new: queue.Queue[dict[str, Any]] = queue.Queue()
        self.stderr = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @classmethod
    def started(cls, config: Path) -> Daemon:
        """`run`, once it has reconciled, warmed up and begun to stream."""
        daemon = cls(config)
        daemon.wait_for(lambda e: e.get("event") == "started", timeout=90)
        return daemon

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            self.events.append(event)
            self._new.put(event)

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60) -> dict[str, Any]:
        """The first log event (seen before or after this call) that satisfies `predicate`."""
        for event in list(self.events):
            if predicate(event):
                return event
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None and self._new.empty():
                self._reader.join(timeout=5)
                raise AssertionError(f"daemon exited ({self.proc.returncode}): {self.finish()[-2000:]}")
            try:
                event = self._new.get(timeout=0.2)
            except queue.Empty:
                continue
            if predicate(event):
                return event
        raise AssertionError(f"no such log event within {timeout} s; last: {self.lines[-5:]}")

    def decisions(self) -> list[dict[str, Any]]:
        """The decision lines so far."""
        return [e for e in self.events if e.get("event") == "decision" and not e["warming_up"]]

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, and the exit code."""
        self.proc.terminate()
        return self.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: no chance to clean up."""
        self.proc.kill()
        self.wait(30)

    def wait(self, timeout: float = 30) -> int:
        """Wait for the process to end; its exit code."""
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        self.finish()
        return code

    def finish(self) -> str:
        """Everything it wrote on stderr (after it ended)."""
        if self.proc.poll() is not None and self.proc.stderr is not None and not self.stderr:
            self.stderr = self.proc.stderr.read()
        return self.stderr


def rows(db_url: str, table: Any, *where: Any) -> list[Any]:
    """Rows of one table, in id order where it has one."""
    engine = make_engine(db_url)
    try:
        with session_factory(engine)() as session:
            query = select(table).where(*where)
            if hasattr(table, "id"):
                query = query.order_by(table.id)
            return list(session.scalars(query))
    finally:
        engine.dispose()


def publish(
    fake: FakeAlpaca, bars: Sequence[MinuteBar], pace: float = 0.02, symbol: str = "BTC/USD"
) -> Iterator[MinuteBar]:
    """Publish minutes one by one, `pace` seconds apart, yielding each after it went out."""
    for bar in bars:
        fake.publish(symbol, bar)
        yield bar
        time.sleep(pace)
