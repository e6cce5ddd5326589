"""Soak: a million symbol-bars through the whole bar path with SQL recording; bars/s and RSS over time.

    .venv/bin/python bench/soak.py [--symbol-bars N] [--report-every N] [--warmup N]
                                        [--tolerance PCT] [--db PATH] [--log-level LEVEL] [--json PATH]

The daemon's engine, assembled in process as `bot.daemon` assembles it, from the bundled config.toml: the
bundled model (window inference), the bar guard, features, strategy, sizing and every risk check, the
journal writing every batch to SQLite (a fresh file, WAL, as the daemon's), the simulated broker, and the
decision log (JSON, at --log-level, into /dev/null as it would go into journald). Only the feed is the
benchmark's own: the bundled hourly bars of SPY, AAPL and IBM (1998-2021, read by the replay feed's CSV
reader) looped as often as N needs, each loop shifted by a whole number of weeks so the series continue in
time with the same weekdays and hours (the last loop is the real 1998-2021, the earlier ones lie before
it: a bar dated after the host's clock would be refused as from the future). Each loop's prices are
detrended, the same way every loop, so that a loop ends where the next begins (see `Series`).

Every --report-every symbol-bars (100,000) one line: bars/s over the interval and the resident set size
(VmRSS). At the end: RSS at the start (engine assembled, before the first bar), after the warm-up
(--warmup symbol-bars, default a fifth of N up to 100,000) and at the end, and the growth after the
warm-up. Exit code 1 when that growth exceeds --tolerance percent (default 10).

Why 10%: after the warm-up every bounded cache of the path is full (SQLite's page cache, SQLAlchemy's
statement cache, torch's allocator, the feature rings, river's drift windows, the Journal's upsert
statements), so the RSS left to move is allocator slack, a few MiB on a process of about 400 MiB (torch
alone is most of that). Growth beyond a tenth over the rest of a million bars is state that grows with
the run: a leak, or a record that belongs in the database.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import heapq
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import func, select

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from a checkout, installed or not
    sys.path.insert(0, str(REPO))


from bench.pipeline import assemble  # noqa: E402
from bot.bars import Bar  # noqa: E402
from bot.clock import MarketClock  # noqa: E402
from bot.config import AppConfig, load_config  # noqa: E402
from bot.engine import Engine  # noqa: E402
from bot.feeds import FeedItem  # noqa: E402
from bot.feeds.replay import ReplayFeedConfig, load_csv  # noqa: E402
from bot.logs import configure_logging  # noqa: E402
from bot.model import resolve_device  # noqa: E402
from bot.store import models as m  # noqa: E402

CONFIG = REPO / "config.toml"
DEFAULT_SYMBOL_BARS = 1_000_000
REPORT_EVERY = 100_000
TOLERANCE_PCT = 10.0
WARMUP_DAYS = 120  # of loop 0 before the first streamed bar: history for the feature windows
WEEK = timedelta(weeks=1)


def rss_mib() -> float:
    """Resident set size of this process now (VmRSS), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


@dataclass(frozen=True)
class Series:
    """One symbol's bundled bars, detrended so that the last close equals the first open.

    Each bar's prices are multiplied by exp(-g * (t - t0) / (t1 - t0)), g = log(last close / first open):
    a constant drift of g over the whole span taken out (for SPY 1.4 over 40,000 bars, 3.5e-5 a bar against
    an hourly volatility near 3e-3), the same factor for open, high, low and close of a bar. Without it the
    loop boundary would be a jump (SPY from 397 back to 97), and scaling each loop to continue the last
    instead would compound (SPY x4 a loop, AAPL x9) until a lot costs more than the account."""

    symbol: str
    bars: list[Bar]
    times: list[datetime]

    @classmethod
    def load(cls, path: Path, symbol: str, timeframe: timedelta) -> Series:
        """The detrended bars of one CSV file (read by the replay feed's reader)."""
        raw, _ = load_csv(path, symbol, timeframe)
        first, last = raw[0], raw[-1]
        drift = math.log(last.close / first.open)
        span = (last.ts - first.ts).total_seconds()

        def scaled(bar: Bar) -> Bar:
            k = math.exp(-drift * (bar.ts - first.ts).total_seconds() / span)
            return replace(
                bar,
                open=round(bar.open * k, 4),
                high=round(bar.high * k, 4),
                low=round(bar.low * k, 4),
                close=round(bar.close * k, 4),
            )

        bars = [scaled(b) for b in raw]
        return cls(symbol, bars, [b.ts for b in bars])


def loop_period(series: Sequence[Series]) -> timedelta:
    """How far one loop is shifted after the one before: the data's span, rounded up to whole weeks (so
    a bar keeps its weekday and hour, which the calendar features see)."""
    first = min(s.times[0] for s in series)
    last = max(s.times[-1] for s in series)
    return WEEK * (((last - first) // WEEK) + 1)


class LoopedFeed:
    """The bundled bars looped `loops` times, each loop a whole number of weeks after the one before, the
    last loop unshifted; streams from `start` until `limit` symbol-bars have gone out. A Feed (replay-like:
    no clock, market time is the time of the bars)."""

    def __init__(self, series: Sequence[Series], loops: int, start: datetime, limit: int) -> None:
        self._series = {s.symbol: s for s in series}
        period = loop_period(series)
        self._shifts = [period * (k - loops + 1) for k in range(loops)]
        self._start = start
        self._limit = limit
        self._resume: dict[str, datetime] = {}
        self.sent = 0
        self.first: datetime | None = None
        self.last: datetime | None = None

    @property
    def clock(self) -> MarketClock | None:
        """None: market time is the time of the bars."""
        return None

    async def start(self) -> None:
        """Nothing to connect."""

    def resume_from(self, last_seen: Mapping[str, datetime]) -> None:
        """Skip bars at or before these per-symbol open times."""
        self._resume = dict(last_seen)

    def _loop(self, shift: timedelta) -> Iterator[Bar]:
        def shifted(series: Series) -> Iterator[Bar]:
            skip = self._resume.get(series.symbol)
            # Bars before the start are the warm-up's (history), not the stream's.
            index = bisect.bisect_left(series.times, self._start - shift)
            for bar in series.bars[index:]:
                moved = replace(bar, ts=bar.ts + shift)
                if skip is None or moved.ts > skip:
                    yield moved

        # Close-time order; within an instant, the symbols in the configured order (as the replay feed).
        return heapq.merge(*(shifted(s) for s in self._series.values()), key=lambda b: b.close_time)

    async def stream(self) -> AsyncIterator[FeedItem]:
        """The looped bars in close-time order, `limit` of them; control is yielded between instants."""
        previous: datetime | None = None
        for shift in self._shifts:
            for bar in self._loop(shift):
                if self.sent >= self._limit:
                    return
                if bar.close_time != previous:
                    await asyncio.sleep(0)
                    previous = bar.close_time
                self.sent += 1
                self.first = self.first or bar.ts
                self.last = bar.ts
                yield bar
        raise RuntimeError(f"{len(self._shifts)} loops hold fewer than {self._limit} symbol-bars")

    async def history(self, symbol: str, start: datetime, end: datetime) -> list[Bar]:
        """Bars with start <= ts < end, oldest first, from every loop."""
        series = self._series[symbol]
        out: list[Bar] = []
        for shift in self._shifts:
            lo = bisect.bisect_left(series.times, start - shift)
            hi = bisect.bisect_left(series.times, end - shift)
            out.extend(replace(b, ts=b.ts + shift) for b in series.bars[lo:hi])
        return out

    async def close(self) -> None:
        """Nothing to release."""


@dataclass
class Interval:
    """One report line."""

    symbol_bars: int
    seconds: float
    bars_per_s: float
    rss_mib: float


@dataclass
class Monitor:
    """Called after every batch: a report line each `every` symbol-bars, the RSS once warm."""

    every: int
    warmup: int
    quiet: bool = False
    started: float = field(default_factory=time.perf_counter)
    intervals: list[Interval] = field(default_factory=list)
    warm_rss: float | None = None
    _mark: tuple[int, float] = (0, 0.0)

    def begin(self) -> None:
        """The clock starts now (the first bar is next)."""
        self.started = time.perf_counter()
        self._mark = (0, self.started)

    def __call__(self, engine: Engine) -> None:
        """Look at the counters after a batch."""
        bars = engine.stats.bars
        if self.warm_rss is None and bars >= self.warmup:
            self.warm_rss = rss_mib()
        if bars - self._mark[0] >= self.every:
            self.report(bars)

    def report(self, bars: int) -> None:
        """A line for the interval since the last one."""
        now = time.perf_counter()
        done, since = self._mark
        if bars == done:
            return
        interval = Interval(bars, round(now - self.started, 1), (bars - done) / (now - since), rss_mib())
        self.intervals.append(interval)
        self._mark = (bars, now)
        if not self.quiet:
            print(
                f"{bars:>10,} symbol-bars {interval.seconds:>8.1f} s {interval.bars_per_s:>8.0f} bars/s"
                f" RSS {interval.rss_mib:>7.1f} MiB",
                flush=True,
            )


def _loops_needed(series: Sequence[Series], start: datetime, limit: int) -> int:
    """Loops that hold `limit` symbol-bars from `start` on (loop 0 loses the bars before `start`)."""
    per_loop = sum(len(s.bars) for s in series)
    lost = sum(bisect.bisect_left(s.times, start) for s in series)
    return max(1, math.ceil((limit + lost) / per_loop))


async def soak(config: AppConfig, db: Path, limit: int, monitor: Monitor) -> dict[str, Any]:
    """Run `limit` symbol-bars through the engine into the SQLite file `db`; the run's counters."""
    strategy = config.strategies[0]
    if not isinstance(config.feed, ReplayFeedConfig):
        raise SystemExit(f"{CONFIG} should have a replay feed for its data folder")
    torch.set_num_threads(config.daemon.torch_threads)
    series = [Series.load(config.feed.csv_path(s), s, strategy.bar_interval) for s in strategy.symbols]
    first = min(s.times[0] for s in series)
    loops = _loops_needed(series, first + timedelta(days=WARMUP_DAYS), limit)
    # Loop 0 lies loops - 1 periods back; the stream starts WARMUP_DAYS into it.
    start = first - loop_period(series) * (loops - 1) + timedelta(days=WARMUP_DAYS)
    feed = LoopedFeed(series, loops, start, limit)

    assembled = assemble(
        config, strategy, feed, db, resolve_device(config.daemon.device), book="soak", on_batch=monitor
    )
    engine, journal, sessions = assembled.engine, assembled.journal, assembled.sessions
    try:
        rss_start = rss_mib()
        monitor.begin()
        await engine.reconcile_at_start()
        await engine.warm_up({}, start)
        stats = await engine.run()
        seconds = time.perf_counter() - monitor.started
        monitor.report(stats.bars)
        journal.finish_run(m.RunStatus.COMPLETED, stats.bars)
        with sessions() as session:
            counts = {
                table.__tablename__: session.scalar(select(func.count()).select_from(table)) or 0
                for table in (m.Fill, m.Order, m.Prediction, m.RiskDecision, m.EquitySnapshot, m.Alert)
            }
            # By kind: a loop boundary that looked like a jump would show as bar_rejected or outlier_bar.
            alerts = dict(session.execute(select(m.Alert.kind, func.count()).group_by(m.Alert.kind)).all())
    finally:
        assembled.close()
    return {
        "symbol_bars": feed.sent,
        "traded_bars": stats.bars,  # the ones the guard let through
        "batches": stats.batches,
        "seconds": round(seconds, 1),
        "bars_per_s": round(feed.sent / seconds, 1),
        "loops": loops,
        "span": [t.isoformat() if t else None for t in (feed.first, feed.last)],
        "rows": counts,
        "alerts": alerts,
        "rss_start_mib": round(rss_start, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak; exit 1 when RSS grew beyond the tolerance after the warm-up."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--symbol-bars", type=int, default=DEFAULT_SYMBOL_BARS, help="default 1,000,000")
    parser.add_argument("--report-every", type=int, default=REPORT_EVERY, help="symbol-bars (100,000)")
    parser.add_argument("--warmup", type=int, help="symbol-bars before the warm RSS (N/5, at most 100,000)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE_PCT, help="RSS growth, percent (10)")
    parser.add_argument("--db", type=Path, help="SQLite file to write (default: a temporary one, removed)")
    parser.add_argument("--log-level", default="info", help="decision log level, into /dev/null (info)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.symbol_bars < 1:
        parser.error("--symbol-bars must be at least 1")
    warmup = args.warmup if args.warmup is not None else min(REPORT_EVERY, args.symbol_bars // 5)

    config = load_config(CONFIG)
    with Path(os.devnull).open("w") as sink, tempfile.TemporaryDirectory(prefix="soak-") as scratch:
        configure_logging(args.log_level, None, stream=sink)
        db = args.db or Path(scratch) / "soak.sqlite"
        db.unlink(missing_ok=True)
        monitor = Monitor(args.report_every, warmup)
        print(
            f"# soak: {args.symbol_bars:,} symbol-bars of {', '.join(config.strategies[0].symbols)},"
            f" {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, database {db}",
            flush=True,
        )
        result = asyncio.run(soak(config, db, args.symbol_bars, monitor))
        size = sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))  # with -wal and -shm
        result["database_mib"] = round(size / 2**20, 1)
    end = monitor.intervals[-1].rss_mib
    warm = monitor.warm_rss if monitor.warm_rss is not None else end
    growth = 100 * (end - warm) / warm
    result |= {
        "warmup_symbol_bars": warmup,
        "rss_warm_mib": round(warm, 1),
        "rss_end_mib": round(end, 1),
        "rss_growth_after_warmup_pct": round(growth, 2),
        "tolerance_pct": args.tolerance,
        "intervals": [asdict(i) for i in monitor.intervals],
        "env": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "load_average_1m": os.getloadavg()[0],
        },
    }
    ok = growth <= args.tolerance
    print(
        f"# {result['symbol_bars']:,} symbol-bars in {result['seconds']} s:"
        f" {result['bars_per_s']:.0f} bars/s;"
        f" RSS start {result['rss_start_mib']} MiB, after {warmup:,} bars {result['rss_warm_mib']} MiB,"
        f" end {result['rss_end_mib']} MiB: {growth:+.1f}% after the warm-up"
        f" ({'within' if ok else 'OVER'} {args.tolerance:g}%); rows {result['rows']},"
        f" alerts {result['alerts']},"
        f" database {result['database_mib']} MiB",
        flush=True,
    )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
