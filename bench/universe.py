"""Any number of symbols made of the bundled real bars, on one clock, so that every batch holds them all.

Symbol k follows the real hourly series of SPY, AAPL or IBM (k mod 3), started `k // 3 * STRIDE` bars later
than symbol k mod 3: each symbol moves like a real stock (overnight gaps, splits, bad prints and all) and
differently from its neighbours. Every symbol's bars are stamped with SPY's bar times, so all of them
close at the same instants, as a universe of one exchange's stocks does.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.bars import Bar
from bot.feeds.replay import CSV_HEADER, load_csv

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data" / "equities-1h"
BASES = ("SPY", "AAPL", "IBM")
STRIDE = 13  # bars between two symbols that follow the same real series
HOUR = timedelta(hours=1)
START = datetime(2016, 1, 4, tzinfo=UTC)  # after the bundled model's training span; warm-up included


@dataclass(frozen=True)
class Universe:
    """`symbols` names and each symbol's bars, oldest first, all on the same bar times."""

    symbols: list[str]
    bars: dict[str, list[Bar]]

    @classmethod
    def build(cls, n: int, length: int) -> Universe:
        """`n` symbols of `length` bars each, from START on."""
        real = {s: load_csv(DATA / f"{s}.csv", s, HOUR)[0] for s in BASES}
        clock = [b.ts for b in real["SPY"] if b.ts >= START][:length]
        if len(clock) < length:
            raise ValueError(f"the bundled data holds {len(clock)} bars after {START:%Y-%m-%d}, not {length}")
        symbols = [f"{BASES[k % 3]}{k:04d}" for k in range(n)]
        bars: dict[str, list[Bar]] = {}
        for k, name in enumerate(symbols):
            series = real[BASES[k % 3]]
            first = next(i for i, b in enumerate(series) if b.ts >= START) + (k // 3) * STRIDE
            source = series[first : first + length]
            if len(source) < length:
                raise ValueError(f"{n} symbols of {length} bars need more data than the bundled files hold")
            bars[name] = [replace(b, symbol=name, ts=ts) for b, ts in zip(source, clock, strict=True)]
        return cls(symbols, bars)

    @property
    def times(self) -> list[datetime]:
        """The bar open times, shared by every symbol."""
        return [b.ts for b in self.bars[self.symbols[0]]]

    def instant(self, index: int) -> list[Bar]:
        """Every symbol's bar at one position of the clock."""
        return [self.bars[s][index] for s in self.symbols]

    def write_csv(self, folder: Path) -> dict[str, Path]:
        """The bars as the replay feed's CSV files, one per symbol."""
        folder.mkdir(parents=True, exist_ok=True)
        files = {}
        for symbol in self.symbols:
            path = folder / f"{symbol}.csv"
            with path.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(CSV_HEADER)
                for b in self.bars[symbol]:
                    writer.writerow(
                        [b.ts.isoformat().replace("+00:00", "Z"), b.open, b.high, b.low, b.close, b.volume]
                    )
            files[symbol] = path
        return files
