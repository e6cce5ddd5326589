"""Alpaca feed: live minute bars from Alpaca's market-data websocket, built into the strategy's timeframe.

A period is final when the next period's first minute arrives or when its end plus `grace_seconds` has
passed on the venue's clock; it is then checked against Alpaca's historical minutes (REST), which also
fill whatever the stream missed (a dropped socket, a restart), so each bar is sent once, whole. A
correction (`updatedBars`) of a period already sent becomes a revision: the engine applies it while the
bar's instant is undecided and otherwise records it. A silent socket while the market is open is alerted
and reconnected; the venue's clock is checked against the host's."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, field_validator

from bot.alerts import Alert, AlertKind, Severity
from bot.bars import Bar
from bot.clock import VenueClock
from bot.errors import ConfigError
from bot.feeds.base import BarRevision, FeedContext, FeedItem, FeedSettings
from bot.feeds.sessions import DAY, Calendar, Period, Periods, aggregate, supported
from bot.logs import get_logger
from bot.settings import check_paper_url
from bot.venues.base import VenueError

if TYPE_CHECKING:
    from bot.venues.alpaca import DataStream, MarketDataRest, TradingRest

PAPER_API = "https://paper-api.alpaca.markets"
DATA_API = "https://data.alpaca.markets"
DATA_STREAM = "wss://stream.data.alpaca.markets"
_REST_HOSTS = frozenset({"paper-api.alpaca.markets", "data.alpaca.markets", "data.sandbox.alpaca.markets"})
_STREAM_HOSTS = frozenset({"stream.data.alpaca.markets", "stream.data.sandbox.alpaca.markets"})
_CHECK_TRIES = 3  # REST checks of a final period before it is sent as the stream built it (alerted)
_CLOCK_RESYNC = 600.0  # host seconds between readings of Alpaca's clock
_HOLD = timedelta(minutes=5)


def _rest(url: str | None) -> str | None:
    return None if url is None else check_paper_url(url, _REST_HOSTS, frozenset({"https", "http"}))


class AlpacaFeedConfig(FeedSettings):
    """[feed] kind = "alpaca": Alpaca's live bars, stocks (`data_feed` iex or sip) or crypto. The URL keys
    override Alpaca's (a loopback host, or Alpaca's own paper and data hosts, nothing else)."""

    kind: Literal["alpaca"] = "alpaca"
    asset_class: Literal["stock", "crypto"] = "stock"
    data_feed: Literal["iex", "sip"] = "iex"
    stream_url: str | None = None
    rest_url: str | None = None
    clock_url: str | None = None  # the trading API, which has the clock and the calendar
    grace_seconds: Annotated[float, Field(ge=0, le=600)] = 5.0
    silence_seconds: Annotated[float, Field(gt=0, le=86_400)] = 180.0
    max_clock_skew_seconds: Annotated[float, Field(gt=0)] = 5.0
    request_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0

    @field_validator("rest_url", "clock_url")
    @classmethod
    def _rest_url(cls, value: str | None) -> str | None:
        return _rest(value)

    @field_validator("stream_url")
    @classmethod
    def _stream_url(cls, value: str | None) -> str | None:
        return None if value is None else check_paper_url(value, _STREAM_HOSTS, frozenset({"wss", "ws"}))

    def build(self, context: FeedContext) -> AlpacaFeed:
        """The live feed; its keys come from the environment."""
        if context.backtest:
            raise ConfigError("feed.kind", 'a backtest replays stored bars: use [feed] kind = "replay"')
        for symbol, timeframe in context.symbols.items():
            if not supported(timeframe):
                key = context.keys.get(symbol, "feed").replace(".symbols", ".timeframe")
                raise ConfigError(
                    key,
                    "Alpaca's bars are built from minutes: use minutes or hours that divide a day, or 1d",
                )
        # alpaca-py takes most of a second to import: only the commands that stream pay for it.
        from bot.venues import alpaca as wire  # noqa: PLC0415

        keys = wire.keys_from_env("feed")
        default_stream = (
            f"{DATA_STREAM}/v1beta3/crypto/us"
            if self.asset_class == "crypto"
            else f"{DATA_STREAM}/v2/{self.data_feed}"
        )
        return AlpacaFeed(
            self,
            context,
            clock_api=wire.TradingRest(self.clock_url or PAPER_API, keys, self.request_timeout_seconds),
            data_api=wire.MarketDataRest(
                self.asset_class,
                self.rest_url or DATA_API,
                keys,
                self.data_feed,
                self.request_timeout_seconds,
            ),
            stream=lambda feed: wire.DataStream(
                self.asset_class,
                self.stream_url or default_stream,
                keys,
                self.data_feed,
                list(context.symbols),
                on_bar=feed.on_minute,
                on_update=feed.on_correction,
                on_connect=feed.on_connect,
            ),
        )


class AlpacaFeed:
    """Minute bars in, the strategies' closed bars out."""

    def __init__(
        self,
        config: AlpacaFeedConfig,
        context: FeedContext,
        *,
        clock_api: TradingRest,
        data_api: MarketDataRest,
        stream: Callable[[AlpacaFeed], DataStream],
    ) -> None:
        self._config = config
        self._grace = timedelta(seconds=config.grace_seconds)
        self._clock_api = clock_api
        self._data_api = data_api
        self._stream = stream(self)
        self._clock = VenueClock()
        self._groups: dict[timedelta, list[str]] = {}
        for symbol, timeframe in context.symbols.items():
            self._groups.setdefault(timeframe, []).append(symbol)
        # Crypto trades around the clock; stocks in the sessions of Alpaca's calendar.
        self._calendar = Calendar() if config.asset_class == "stock" else None
        self._periods = {tf: Periods(tf, self._calendar) for tf in self._groups}
        self._timeframe = dict(context.symbols)
        self._minutes: dict[str, dict[datetime, Bar]] = {s: {} for s in context.symbols}
        self._sent: dict[str, datetime] = {}  # the start of the last period sent (or handled) per symbol
        self._held: dict[str, datetime] = {}  # from when on minutes of bars sent are still held
        self._latest: dict[timedelta, datetime] = {}  # per timeframe: the latest minute streamed
        self._done: dict[timedelta, datetime] = {}  # per timeframe: the end of the last period finalized
        self._items: asyncio.Queue[FeedItem] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._last_message = time.monotonic()
        self._connections = 0
        self._next_sync = 0.0  # time.monotonic() of the next reading of Alpaca's clock
        self._skewed = False
        self._log = get_logger("paperbot.feed.alpaca")

    @property
    def clock(self) -> VenueClock:
        """Alpaca's clock: its server time at start (and every ten minutes), then its bars' times."""
        return self._clock

    async def start(self) -> None:
        """Read Alpaca's clock (an error, bad keys say, stops the start) and, for stocks, the calendar."""
        try:
            await self._sync_clock()
            now = self._clock.now()
            await self._ensure_sessions(now - timedelta(days=10), now)
        except VenueError as exc:
            if exc.temporary:
                raise
            raise ConfigError("feed", f"Alpaca refused the keys or the URL: {exc.message}") from None

    async def _sync_clock(self) -> None:
        """Read Alpaca's clock; a skew from the host's beyond the bound is alerted when it appears."""
        clock = await self._clock_api.clock()
        skew = self._clock.sync(clock.ts)
        self._next_sync = time.monotonic() + _CLOCK_RESYNC
        bound = self._config.max_clock_skew_seconds
        if abs(skew) > bound and not self._skewed:
            self._log.warning("clock_skew", skew_seconds=skew)
            message = f"host clock is {skew:+.3f} s off Alpaca's (bound {bound} s)"
            details = {"skew_seconds": skew}
            self._say(Alert(clock.ts, Severity.WARNING, AlertKind.CLOCK_SKEW, message, details=details))
        self._skewed = abs(skew) > bound

    async def _ensure_sessions(self, start: datetime, end: datetime) -> None:
        """Make sure the calendar spans [start, end] (and a week beyond, for the next opens)."""
        if self._calendar is not None and not self._calendar.covers(start, end):
            self._calendar.add(await self._clock_api.calendar((start - DAY).date(), (end + 7 * DAY).date()))

    def resume_from(self, last_seen: Mapping[str, datetime]) -> None:
        """Send only bars after these per-symbol open times."""
        self._sent.update(last_seen)

    # ---- the websocket's handlers (run on the loop, inside alpaca-py's consumer) --------------------

    async def on_minute(self, bar: Bar) -> None:
        """A minute bar: kept for its period. It moves the venue's clock, so the stream looks again at
        what has become final (a minute of a later period finalizes the earlier one at once)."""
        self._heard(bar)
        self._keep(bar)
        self._wake.set()

    async def on_correction(self, bar: Bar) -> None:
        """An updated minute bar (late trades): applied to its period, sent again if already sent."""
        self._heard(bar)
        self._keep(bar)

    def on_connect(self) -> None:
        """Every (re)connection; what a drop missed comes from REST when its periods are finalized."""
        self._connections += 1
        self._last_message = time.monotonic()
        if self._connections > 1:
            self._log.warning("data_stream_reconnected", connections=self._connections)

    def _heard(self, bar: Bar) -> None:
        self._last_message = time.monotonic()
        self._clock.observe(bar.ts + bar.timeframe)  # a minute bar is sent once its minute has ended

    def _keep(self, minute: Bar) -> None:
        """Store a minute. One of a bar already sent revises it (while its minutes are still held, else it
        is alerted as it came): the engine applies a revision while the bar is undecided, else records it."""
        symbol = minute.symbol
        if symbol not in self._minutes:
            return
        tf = self._timeframe[symbol]
        period = self._periods[tf].of(minute.ts)
        if period is None:  # outside the regular session
            return
        self._latest[tf] = max(self._latest.get(tf, minute.ts), minute.ts)
        sent = self._sent.get(symbol)
        if sent is None or period.start > sent:
            self._minutes[symbol][minute.ts] = minute
            return
        held = self._held.get(symbol)
        if held is not None and period.start >= held:
            self._minutes[symbol][minute.ts] = minute
            bar = self._build(symbol, period)
            if bar is not None:
                self._say(BarRevision(bar, "Alpaca corrected a minute (updatedBars)"))
            return
        message = f"Alpaca corrected the minute {minute.ts.isoformat()} of a bar sent long ago"
        details = {
            "minute": minute.ts.isoformat(),
            "open": minute.open,
            "high": minute.high,
            "low": minute.low,
        }
        details |= {"close": minute.close, "volume": minute.volume}
        self._say(
            Alert(
                self._clock.now(),
                Severity.WARNING,
                AlertKind.BAR_REVISED,
                message,
                symbol=symbol,
                details=details,
            )
        )

    def _say(self, item: FeedItem) -> None:
        """Queue an alert or a revision for the stream, and wake it."""
        self._items.put_nowait(item)
        self._wake.set()

    def _build(self, symbol: str, period: Period) -> Bar | None:
        periods = self._periods[self._timeframe[symbol]]
        minutes = sorted(
            (
                m
                for t, m in self._minutes[symbol].items()
                if period.start <= t < period.end and periods.of(t) == period
            ),
            key=lambda m: m.ts,
        )
        return aggregate(symbol, period, minutes, self._timeframe[symbol])

    # ---- the stream of bars -----------------------------------------------------------------------

    async def stream(self) -> AsyncIterator[FeedItem]:
        """Backfill from where each symbol left off, then bars as their periods become final."""
        runner = asyncio.create_task(self._stream.run(), name="alpaca-data")
        watchdog = asyncio.create_task(self._watch(), name="alpaca-silence")
        try:
            now = self._clock.now()
            for tf, symbols in self._groups.items():
                starts = [self._sent.get(s) for s in symbols]
                first = min((s for s in starts if s is not None), default=None)
                # Where the first symbol left off, else the current period: nothing older to send.
                self._done[tf] = first if first is not None else now
                period = self._periods[tf].of(first) if first is not None else None
                if period is not None:
                    self._done[tf] = period.end
            while True:
                self._wake.clear()  # before the work: a minute that comes in during it wakes the next sleep
                while not self._items.empty():
                    yield self._items.get_nowait()
                for bar in await self._final_bars():
                    yield bar
                if time.monotonic() >= self._next_sync:
                    await self._sync_clock()
                await self._sleep(self._next_deadline())
        finally:
            watchdog.cancel()
            with contextlib.suppress(Exception):
                await self._stream.stop()
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await runner

    async def _sleep(self, deadline: datetime | None) -> None:
        timeout = None if deadline is None else self._clock.seconds_until(deadline)
        with contextlib.suppress(asyncio.TimeoutError):
            # At least once a minute: the clock is re-read and the calendar extended from this loop too.
            await asyncio.wait_for(self._wake.wait(), timeout=60.0 if timeout is None else min(timeout, 60.0))

    def _next_deadline(self) -> datetime | None:
        ends = []
        for tf, done in self._done.items():
            period = self._periods[tf].after(done)
            if period is not None:
                ends.append(period.end + self._grace)
        return min(ends, default=None)

    def _final(self, tf: timedelta, period: Period, now: datetime) -> bool:
        # Its end plus the grace has passed, or a later period's minute came in (Alpaca sends a minute
        # once it has ended, so every minute of this period was sent before it).
        latest = self._latest.get(tf)
        return now >= period.end + self._grace or (latest is not None and latest >= period.end)

    async def _final_bars(self) -> list[Bar]:
        """Every period that has become final, checked against REST, as bars in close order."""
        bars: list[Bar] = []
        now = self._clock.now()
        for tf, symbols in self._groups.items():
            await self._ensure_sessions(self._done[tf], now)
            periods: list[Period] = []
            while (
                period := self._periods[tf].after(periods[-1].end if periods else self._done[tf])
            ) is not None:
                if not self._final(tf, period, now):
                    break
                periods.append(period)
            if periods:
                bars.extend(await self._check(symbols, tf, periods))
                self._done[tf] = periods[-1].end
        return sorted(bars, key=lambda b: (b.close_time, b.symbol))

    async def _check(self, symbols: list[str], tf: timedelta, periods: list[Period]) -> list[Bar]:
        """The periods' bars from REST's minutes, with the stream's where REST has none."""
        rest: dict[str, list[Bar]] = {}
        for attempt in range(_CHECK_TRIES):
            try:
                rest = await self._data_api.minutes(symbols, periods[0].start, periods[-1].end)
                break
            except VenueError as exc:
                if attempt == _CHECK_TRIES - 1:
                    self._say(
                        Alert(
                            self._clock.now(),
                            Severity.WARNING,
                            AlertKind.FEED_PROBLEM,
                            f"bars up to {periods[-1].end.isoformat()} sent as streamed, unchecked: {exc}",
                        )
                    )
                else:
                    await asyncio.sleep(0.5 * 2**attempt)
        bars = []
        for symbol in symbols:
            for minute in rest.get(symbol, []):
                self._minutes[symbol][minute.ts] = minute  # REST has the venue's final word
            for period in periods:
                sent = self._sent.get(symbol)
                if sent is not None and period.start <= sent:
                    continue
                bar = self._build(symbol, period)
                self._sent[symbol] = period.start
                if bar is not None:  # no trade in the period: no bar, as at the venue
                    bars.append(bar)
            self._forget(symbol, periods[-1])
        return bars

    def _forget(self, symbol: str, last: Period) -> None:
        """Drop the minutes of bars sent, but those of the last one and of any that ended within
        `_HOLD`: corrections come about half a minute after their minute."""
        keep_from = min(last.start, last.end - _HOLD)
        minutes = self._minutes[symbol]
        for t in [t for t in minutes if t < keep_from]:
            del minutes[t]
        self._held[symbol] = keep_from

    async def _watch(self) -> None:
        """The silence watchdog: no message for `silence_seconds` while the market is open."""
        silence = self._config.silence_seconds
        while True:
            await asyncio.sleep(min(5.0, silence / 4))
            quiet = time.monotonic() - self._last_message
            if quiet < silence or not self._market_open():
                continue
            self._log.warning("data_stream_silent", seconds=round(quiet, 1))
            self._say(
                Alert(
                    self._clock.now(),
                    Severity.WARNING,
                    AlertKind.FEED_PROBLEM,
                    f"no market data for {quiet:.0f} s while the market is open: reconnecting",
                    details={"problem": "silent", "seconds": round(quiet, 1)},
                )
            )
            self._last_message = time.monotonic()
            await self._stream.reconnect()

    def _market_open(self) -> bool:
        return self._calendar is None or self._calendar.session_at(self._clock.now()) is not None

    async def history(self, symbol: str, start: datetime, end: datetime) -> list[Bar]:
        """Closed bars of `symbol` with start <= ts < end, built from REST minutes as the stream's are."""
        tf = self._timeframe[symbol]
        periods = self._periods[tf]
        now = self._clock.now()
        await self._ensure_sessions(start, min(end, now))
        minutes = (await self._data_api.minutes([symbol], start, min(end, now)))[symbol]
        spans: dict[Period, list[Bar]] = {}
        for minute in minutes:
            period = periods.of(minute.ts)
            if period is not None and start <= period.start < end and period.end + self._grace <= now:
                spans.setdefault(period, []).append(minute)
        return [b for p in sorted(spans) if (b := aggregate(symbol, p, spans[p], tf)) is not None]

    async def close(self) -> None:
        """Stop the websocket (also done when the stream ends)."""
        with contextlib.suppress(Exception):
            await self._stream.stop()
