"""Replay feed: bars from CSV files, paced at N times real time (or as fast as possible with speed 0)."""

from __future__ import annotations

import asyncio
import bisect
import csv
import heapq
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from bot.alerts import Alert, AlertKind, Severity
from bot.bars import Bar, utc
from bot.clock import MarketClock
from bot.errors import ConfigError, InputError
from bot.feeds.base import FeedContext, FeedItem, FeedProblem, FeedSettings
from bot.settings import resolve_path

CSV_HEADER = ["timestamp", "open", "high", "low", "close", "volume"]


class ReplayFeedConfig(FeedSettings):
    """[feed] kind = "replay": bars from `{data_dir}/{SYMBOL}.csv`."""

    kind: Literal["replay"] = "replay"
    data_dir: Path
    speed: Annotated[float, Field(ge=0)] = 0.0
    start: datetime | None = None
    end: datetime | None = None

    @field_validator("data_dir")
    @classmethod
    def _data_dir(cls, value: Path, info: ValidationInfo) -> Path:
        return resolve_path(value, info)

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else utc(value)

    @model_validator(mode="after")
    def _span(self) -> ReplayFeedConfig:
        if self.start and self.end and self.start >= self.end:
            raise ValueError("start must be before end")
        return self

    def span(self) -> tuple[datetime | None, datetime | None]:
        """The configured replay span."""
        return self.start, self.end

    def csv_path(self, symbol: str, key: str = "feed.data_dir") -> Path:
        """The data file of `symbol`; ConfigError naming `key` when the folder or the file is missing."""
        if not self.data_dir.is_dir():
            raise ConfigError("feed.data_dir", f"folder {self.data_dir} does not exist")
        path = self.data_dir / f"{symbol}.csv"
        if not path.is_file():
            raise ConfigError(key, f"no data file {path} for {symbol}")
        return path

    def stored_bars(self, symbol: str, timeframe: timedelta) -> tuple[list[Bar], list[FeedProblem]]:
        """Every row of the symbol's file."""
        return load_csv(self.csv_path(symbol), symbol, timeframe)

    def build(self, context: FeedContext) -> ReplayFeed:
        """A replay of the configured files; a backtest replays as fast as it can."""
        files = {s: self.csv_path(s, context.keys.get(s, "feed.data_dir")) for s in context.symbols}
        return ReplayFeed(
            files,
            context.symbols,
            speed=0.0 if context.backtest else self.speed,
            start=context.start or self.start,
            end=context.end or self.end,
        )


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")  # an unreadable number becomes NaN so the BarGuard rejects it, with an alert


def load_csv(path: Path, symbol: str, timeframe: timedelta) -> tuple[list[Bar], list[FeedProblem]]:
    """Read `timestamp,open,high,low,close,volume` rows (UTF-8; a spreadsheet's byte-order mark is fine).
    Unreadable numbers become NaN bars (the guard rejects them); rows without a usable timestamp (none,
    one without a zone, one in the future) are returned as problems, never silently dropped. A file that
    cannot be read as such, or holds no bar at all, is an InputError naming it."""
    bars: list[Bar] = []
    problems: list[FeedProblem] = []
    latest = datetime.now(UTC) + timeframe  # no stored bar can open later
    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise InputError(f"{path}: empty file; it needs the header {','.join(CSV_HEADER)}")
            if header != CSV_HEADER:
                raise InputError(f"{path}: the header is {','.join(header)}, not {','.join(CSV_HEADER)}")
            for line_no, row in enumerate(reader, start=2):
                if len(row) != len(CSV_HEADER):
                    problems.append(
                        FeedProblem(symbol, f"{path.name}:{line_no}: {len(row)} fields, expected 6")
                    )
                    continue
                try:
                    ts = datetime.fromisoformat(row[0])
                except ValueError:
                    problems.append(FeedProblem(symbol, f"{path.name}:{line_no}: bad timestamp {row[0]!r}"))
                    continue
                if ts.tzinfo is None:  # its instant would be a guess
                    problems.append(FeedProblem(symbol, f"{path.name}:{line_no}: no time zone in {row[0]!r}"))
                    continue
                ts = utc(ts)
                if ts > latest:  # a typo in a year would reorder the replay and end it there
                    problems.append(FeedProblem(symbol, f"{path.name}:{line_no}: {row[0]} is in the future"))
                    continue
                o, h, low, c, v = (_number(x) for x in row[1:])
                bars.append(Bar(symbol, ts, o, h, low, c, v, timeframe))
    except UnicodeDecodeError:
        raise InputError(f"{path}:{_first_undecodable_line(path)}: not UTF-8 text") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read it: {exc.strerror}") from None
    if not bars:
        why = f"no row is readable (the first: {problems[0].message})" if problems else "only the header"
        raise InputError(f"{path}: no bar in it: {why}")
    return bars, problems


def _first_undecodable_line(path: Path) -> int:
    with Path(path).open("rb") as handle:
        for line_no, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return line_no
    return 0


class ReplayFeed:
    """Streams the given files merged in time order, within [start, end)."""

    def __init__(
        self,
        files: Mapping[str, Path],
        symbols: Mapping[str, timedelta],
        *,
        speed: float = 0.0,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> None:
        self._speed = speed
        self._start = start
        self._end = end
        self._bars: dict[str, list[Bar]] = {}
        self._times: dict[str, list[datetime]] = {}
        self._problems: list[FeedProblem] = []
        self._resume: dict[str, datetime] = {}
        for symbol, timeframe in symbols.items():
            bars, problems = load_csv(files[symbol], symbol, timeframe)
            self._bars[symbol] = bars
            self._times[symbol] = [bar.ts for bar in bars]
            self._problems.extend(problems)

    @property
    def clock(self) -> MarketClock | None:
        """None: a replay's market time is the time of its bars."""
        return None

    async def start(self) -> None:
        """The files were read when the feed was built."""

    def resume_from(self, last_seen: Mapping[str, datetime]) -> None:
        """Skip bars at or before these per-symbol open times."""
        self._resume = dict(last_seen)

    def _first_index(self, symbol: str) -> int:
        times = self._times[symbol]
        index = 0 if self._start is None else bisect.bisect_left(times, self._start)
        resume = self._resume.get(symbol)
        if resume is not None:
            index = max(index, bisect.bisect_right(times, resume))
        return index

    def _ordered(self) -> list[Bar]:
        def span(symbol: str) -> list[Bar]:
            bars = self._bars[symbol][self._first_index(symbol) :]
            return [b for b in bars if b.ts < self._end] if self._end else bars

        # Close-time order; within one instant, the configured symbol order (deterministic batches).
        return list(heapq.merge(*(span(s) for s in self._bars), key=lambda b: b.close_time))

    async def stream(self) -> AsyncIterator[FeedItem]:
        """The rows that could not become bars (once), then the bars; between instants sleep (gap / speed),
        or just yield control when speed is 0."""
        problems, self._problems = self._problems, []
        now = datetime.now(UTC)  # a file's problem has no market time: it is found when the file is read
        for p in problems:
            yield Alert(now, Severity.WARNING, AlertKind.FEED_PROBLEM, p.message, symbol=p.symbol)
        previous: datetime | None = None
        for bar in self._ordered():
            if bar.close_time != previous:
                if previous is not None and self._speed > 0:
                    await asyncio.sleep((bar.close_time - previous).total_seconds() / self._speed)
                else:
                    await asyncio.sleep(0)
                previous = bar.close_time
            yield bar

    async def history(self, symbol: str, start: datetime, end: datetime) -> list[Bar]:
        """Bars with start <= ts < end, oldest first."""
        times = self._times[symbol]
        return self._bars[symbol][bisect.bisect_left(times, start) : bisect.bisect_left(times, end)]

    async def close(self) -> None:
        """Nothing to release for files."""
