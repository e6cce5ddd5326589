"""The feed contract every source of bars keeps, and the config section every `[feed] kind` extends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from bot.alerts import Alert
from bot.bars import Bar
from bot.clock import MarketClock
from bot.errors import ConfigError
from bot.settings import Section


@dataclass(frozen=True, slots=True)
class FeedProblem:
    """Something the feed could not turn into a bar (an unreadable row, a gap it could not fill)."""

    symbol: str
    message: str


@dataclass(frozen=True, slots=True)
class BarRevision:
    """A corrected version of a bar the feed already sent (late trades, a venue's correction). The engine
    applies it while the bar's instant is undecided; after the decision it is recorded and alerted only."""

    bar: Bar
    reason: str


FeedItem = Bar | BarRevision | Alert
"""What a feed's stream yields: closed bars, revisions of bars already sent, and problems to alert."""


@dataclass(frozen=True, slots=True)
class FeedContext:
    """What a feed is built for: each symbol with its timeframe, whether it feeds a backtest (as fast as it
    can, over `start`..`end` when given), and the config key that named each symbol (for errors)."""

    symbols: Mapping[str, timedelta]
    backtest: bool = False
    start: datetime | None = None
    end: datetime | None = None
    keys: Mapping[str, str] = field(default_factory=dict)


class Feed(Protocol):
    """A source of closed bars.

    `stream()` yields closed bars in close-time order (and revisions and alerts) and, for a finite source,
    ends when the data is exhausted. `resume_from()` is called before `stream()` with the last bar already
    handled per symbol, so a restart neither repeats nor skips a bar. `clock` is the venue's clock for a
    live feed, None for a replay, whose time is the time of its bars.
    """

    @property
    def clock(self) -> MarketClock | None:
        """The venue's clock, or None when market time is simply the time of the bars (a replay)."""
        ...

    async def start(self) -> None:
        """Connect what must be connected before history or streaming (a venue's clock); raises
        OperationalError when the feed cannot work at all (bad keys)."""
        ...

    def resume_from(self, last_seen: Mapping[str, datetime]) -> None:
        """Skip bars at or before these per-symbol open times."""
        ...

    def stream(self) -> AsyncIterator[FeedItem]:
        """Closed bars as they become available, with revisions and alerts."""
        ...

    async def history(self, symbol: str, start: datetime, end: datetime) -> list[Bar]:
        """Closed bars of `symbol` with start <= ts < end, oldest first (warm-up and gap backfill)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class FeedSettings(Section):
    """The part of `[feed]` every kind shares: each kind's section extends it and is one member of the
    discriminated union in `bot.feeds.registry`."""

    kind: str

    def build(self, context: FeedContext) -> Feed:
        """The feed this section describes. Checks that need the outside world (files, keys) happen here,
        not when the config is read, so that `paperbot status` never needs them."""
        raise NotImplementedError

    def span(self) -> tuple[datetime | None, datetime | None]:
        """The stored span to replay (start, end); a live feed has none."""
        return None, None

    def stored_bars(self, symbol: str, timeframe: timedelta) -> tuple[list[Bar], list[FeedProblem]]:
        """Every stored bar of `symbol`, for training and evaluation; only a feed over stored bars has it."""
        raise ConfigError(
            "feed.kind", f"{self.kind!r} streams live bars: training and evaluation need stored bars (replay)"
        )
