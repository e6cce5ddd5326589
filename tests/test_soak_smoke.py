"""bench/soak.py stays runnable: a short soak through the whole path, and its looped feed continues
the bundled series in time and in price across a loop boundary."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers import REPO

SOAK = REPO / "bench" / "soak.py"
SYMBOLS = ("SPY", "AAPL", "IBM")


@pytest.fixture(scope="module")
def soak() -> ModuleType:
    """bench/soak.py as a module, loaded from its file (as `python bench/soak.py` runs it)."""
    spec = importlib.util.spec_from_file_location("soak", SOAK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_short_soak_runs_the_whole_path_into_sqlite(tmp_path: Path) -> None:
    """5,000 symbol-bars: exit 0, the JSON report, and the rows the path wrote."""
    db, report = tmp_path / "soak.sqlite", tmp_path / "soak.json"
    args = ["--symbol-bars", "5000", "--report-every", "1000", "--db", str(db), "--json", str(report)]
    done = subprocess.run(
        [sys.executable, str(SOAK), *args],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result: Any = json.loads(report.read_text())
    assert result["symbol_bars"] == 5000
    assert result["traded_bars"] == 5000  # the guard refused nothing
    assert [i["symbol_bars"] for i in result["intervals"]][-1] == 5000
    assert len(result["intervals"]) == 5
    assert all(i["bars_per_s"] > 0 and i["rss_mib"] > 0 for i in result["intervals"])
    assert 0 < result["rss_start_mib"] <= result["rss_warm_mib"]
    assert result["rss_growth_after_warmup_pct"] <= result["tolerance_pct"]
    assert "symbol-bars" in done.stdout and "bars/s" in done.stdout
    with sqlite3.connect(db) as connection:
        rows = {
            table: connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("fills", "predictions")
        }
        (status,) = connection.execute("SELECT status FROM runs").fetchone()
        symbols = {s for (s,) in connection.execute("SELECT symbol FROM market_state")}
    assert rows == {"fills": result["rows"]["fills"], "predictions": 3 * 5000}  # horizons 1, 5, 20
    assert rows["fills"] > 100
    assert status == "completed"
    assert symbols == set(SYMBOLS)


def test_the_looped_feed_continues_in_time_and_price(soak: ModuleType) -> None:
    """Across the boundary of two loops: times keep increasing with their weekday and hour, and each
    symbol's first open of a loop is the last close of the one before."""
    series = [
        soak.Series.load(REPO / "data" / "equities-1h" / f"{s}.csv", s, timedelta(hours=1)) for s in SYMBOLS
    ]
    period = soak.loop_period(series)
    assert period % timedelta(weeks=1) == timedelta(0)
    first = min(s.times[0] for s in series)
    feed = soak.LoopedFeed(series, 2, first - period + timedelta(days=120), limit=500)
    for s in series:
        assert s.bars[-1].close == s.bars[0].open  # detrended: a loop ends where it began
        boundary = s.times[0]  # the second (unshifted) loop starts here
        bars = asyncio.run(
            feed.history(s.symbol, boundary - timedelta(days=10), boundary + timedelta(days=10))
        )
        times = [b.ts for b in bars]
        assert times == sorted(set(times))
        k = next(i for i, b in enumerate(bars) if b.ts >= boundary)
        before, after = bars[k - 1], bars[k]
        assert before.ts == s.times[-1] - period and after.ts == s.times[0]
        assert timedelta(0) < after.ts - before.ts < timedelta(days=7)
        assert after.open == before.close
        assert (before.ts.weekday(), before.ts.hour) == (s.times[-1].weekday(), s.times[-1].hour)

    async def streamed() -> list[Any]:
        return [bar async for bar in feed.stream()]

    bars = asyncio.run(streamed())
    assert len(bars) == 500 and feed.sent == 500
    closes = [b.close_time for b in bars]
    assert closes == sorted(closes)
    # The stream holds the same bars history gives for its span.
    spy = [b for b in bars if b.symbol == "SPY"]
    assert spy == asyncio.run(feed.history("SPY", spy[0].ts, spy[-1].ts + timedelta(seconds=1)))
