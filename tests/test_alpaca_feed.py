"""The Alpaca feed against the fake Alpaca, through alpaca-py's real clients: minute bars built into the
strategy's bars equal Alpaca's own REST bars, and a dropped socket, a silent one and corrections before
and after a bar was sent are handled."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from typing import Any

import pytest
from alpaca.data.historical import CryptoHistoricalDataClient, StockHistoricalDataClient
from alpaca.data.requests import CryptoBarsRequest, StockBarsRequest
from alpaca.data.timeframe import TimeFrame, TimeFrameUnit
from alpaca_harness import KEY, SECRET, btc_minutes, minute_bars
from fake_alpaca import FakeAlpaca, MinuteBar

from bot.alerts import Alert
from bot.bars import Bar
from bot.feeds import BarRevision, FeedContext, FeedItem
from bot.feeds.alpaca import AlpacaFeed, AlpacaFeedConfig
from bot.feeds.sessions import NEW_YORK

HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
ROWS = btc_minutes()


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APCA_API_KEY_ID", KEY)
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET)


@pytest.fixture
def market(keys: None) -> Iterator[tuple[FakeAlpaca, list[MinuteBar]]]:
    """A crypto market at 2022-01-24 10:00 UTC with the ten hours before it; the next four to publish."""
    top = datetime(2022, 1, 24, 10, tzinfo=UTC)
    history = minute_bars(ROWS[:600], top - 600 * timedelta(minutes=1))
    live = minute_bars(ROWS[600:840], top)
    assets: dict[str, dict[str, str]] = {"BTC/USD": {}}
    with FakeAlpaca(key=KEY, secret=SECRET, asset_class="crypto", now=top + MINUTE, assets=assets) as fake:
        fake.add_history("BTC/USD", history)
        yield fake, live
        assert fake.server_errors == []


def feed_for(fake: FakeAlpaca, **overrides: Any) -> AlpacaFeed:
    config = AlpacaFeedConfig(
        asset_class="crypto",
        stream_url=fake.data_stream_url,
        rest_url=fake.rest_url,
        clock_url=fake.rest_url,
        grace_seconds=overrides.pop("grace_seconds", 30.0),
        max_clock_skew_seconds=overrides.pop("max_clock_skew_seconds", 1e9),  # the fake's clock: 2022
        **overrides,
    )
    return config.build(FeedContext({"BTC/USD": HOUR}))


def rest_hours(fake: FakeAlpaca, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Alpaca's (the fake's) own hourly bars starting in [start, end), through alpaca-py."""
    client = CryptoHistoricalDataClient(KEY, SECRET, raw_data=True, url_override=fake.rest_url)
    request = CryptoBarsRequest(
        symbol_or_symbols="BTC/USD",
        timeframe=TimeFrame(1, TimeFrameUnit.Hour),
        start=start,
        end=end - timedelta(seconds=1),  # Alpaca's end is inclusive
    )
    return list(client.get_crypto_bars(request)["BTC/USD"])  # type: ignore[index]


class Consumer:
    """Runs a feed's stream in the background and keeps what it yields."""

    def __init__(self, feed: AlpacaFeed) -> None:
        self.feed = feed
        self.items: list[FeedItem] = []
        self._stream: AsyncIterator[FeedItem] = feed.stream()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for item in self._stream:
            self.items.append(item)

    def bars(self) -> list[Bar]:
        return [i for i in self.items if isinstance(i, Bar)]

    async def until(self, predicate: Any, timeout: float = 20) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate(self):
            if self._task.done():
                self._task.result()
            assert asyncio.get_running_loop().time() < deadline, f"waited in vain; have {self.items}"
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._stream.aclose()  # type: ignore[attr-defined]
        await self.feed.close()


async def streaming(fake: FakeAlpaca, live: list[MinuteBar], **overrides: Any) -> Consumer:
    """A started feed streaming from the hour before the live minutes, connected and subscribed."""
    feed = feed_for(fake, **overrides)
    await feed.start()
    feed.resume_from({"BTC/USD": live[0].t - HOUR})
    consumer = Consumer(feed)
    await asyncio.sleep(0.3)
    return consumer


async def publish(fake: FakeAlpaca, bars: list[MinuteBar]) -> None:
    for bar in bars:
        fake.publish("BTC/USD", bar)
        await asyncio.sleep(0.002)


def same(bar: Bar, rest: dict[str, Any]) -> None:
    assert bar.ts == datetime.fromisoformat(rest["t"].replace("Z", "+00:00"))
    assert (bar.open, bar.high, bar.low, bar.close) == (rest["o"], rest["h"], rest["l"], rest["c"])
    assert bar.volume == pytest.approx(rest["v"], rel=1e-12)


def test_minute_bars_become_hourly_bars_equal_to_alpacas_own(
    market: tuple[FakeAlpaca, list[MinuteBar]],
) -> None:
    fake, live = market

    async def scenario() -> None:
        feed = feed_for(fake)
        await feed.start()
        start = live[0].t
        history = await feed.history("BTC/USD", start - 10 * HOUR, start)
        assert [b.ts for b in history] == [start - k * HOUR for k in range(10, 0, -1)]
        for bar, rest in zip(history, rest_hours(fake, start - 10 * HOUR, start), strict=True):
            same(bar, rest)
        feed.resume_from({"BTC/USD": history[-1].ts})
        consumer = Consumer(feed)
        await asyncio.sleep(0.3)  # connected and subscribed
        await publish(fake, live[:181])  # three hours and the next hour's first minute
        await consumer.until(lambda c: len(c.bars()) == 3)
        for bar, rest in zip(consumer.bars(), rest_hours(fake, start, start + 3 * HOUR), strict=True):
            same(bar, rest)
        assert [b.ts for b in consumer.bars()] == [start, start + HOUR, start + 2 * HOUR]
        await consumer.close()

    asyncio.run(scenario())


def test_a_dropped_socket_is_backfilled_from_rest_without_duplicates(
    market: tuple[FakeAlpaca, list[MinuteBar]],
) -> None:
    fake, live = market

    async def scenario() -> None:
        consumer = await streaming(fake, live, grace_seconds=1.0)
        await publish(fake, live[:20])
        assert fake.drop_data_connections() == 1
        await publish(fake, live[20:45])  # sent while nobody listens: the stream never hears of these
        await fake.async_wait_until(lambda: fake.data_connections == 2, timeout=10)
        await publish(fake, live[45:121])
        await consumer.until(lambda c: len(c.bars()) == 2)
        start = live[0].t
        for bar, rest in zip(consumer.bars(), rest_hours(fake, start, start + 2 * HOUR), strict=True):
            same(bar, rest)
        await asyncio.sleep(1.5)  # past the grace: nothing is sent twice
        assert [b.ts for b in consumer.bars()] == [start, start + HOUR]
        await consumer.close()

    asyncio.run(scenario())


def test_corrections_before_and_after_a_bar_is_sent(market: tuple[FakeAlpaca, list[MinuteBar]]) -> None:
    fake, live = market

    async def scenario() -> None:
        consumer = await streaming(fake, live)
        await publish(fake, live[:50])
        first = live[10]
        fake.publish_update(
            "BTC/USD", MinuteBar(first.t, first.o, first.h + 500, first.l, first.c, first.v + 7)
        )
        await publish(fake, live[50:61])
        await consumer.until(lambda c: len(c.bars()) == 1)
        (bar,) = consumer.bars()
        assert bar.high == max(first.h + 500, *(b.h for b in live[:60]))
        same(bar, rest_hours(fake, live[0].t, live[0].t + HOUR)[0])  # the correction is in, as at Alpaca
        late = live[30]
        fake.publish_update("BTC/USD", MinuteBar(late.t, late.o, late.h, late.l - 400, late.c, late.v))
        await consumer.until(lambda c: any(isinstance(i, BarRevision) for i in c.items))
        (revision,) = [i for i in consumer.items if isinstance(i, BarRevision)]
        assert revision.bar.ts == bar.ts
        assert revision.bar.low == min(bar.low, late.l - 400)
        same(revision.bar, rest_hours(fake, live[0].t, live[0].t + HOUR)[0])
        await consumer.close()

    asyncio.run(scenario())


def test_a_silent_socket_is_alerted_and_reconnected(market: tuple[FakeAlpaca, list[MinuteBar]]) -> None:
    fake, live = market

    async def scenario() -> None:
        consumer = await streaming(fake, live, silence_seconds=0.5)
        await publish(fake, live[:5])
        connections = fake.data_connections
        fake.mute_data(True)
        await consumer.until(
            lambda c: any(isinstance(i, Alert) and "no market data" in i.message for i in c.items)
        )
        await fake.async_wait_until(lambda: fake.data_connections > connections, timeout=10)
        fake.mute_data(False)
        await consumer.close()

    asyncio.run(scenario())


def stock_rest_bars(
    fake: FakeAlpaca, symbol: str, unit: TimeFrameUnit, start: datetime, end: datetime
) -> list[Any]:
    """The fake's own stock bars (regular session only, as paperbot's), starting in [start, end)."""
    client = StockHistoricalDataClient(KEY, SECRET, raw_data=True, url_override=fake.rest_url)
    request = StockBarsRequest(
        symbol_or_symbols=symbol, timeframe=TimeFrame(1, unit), start=start, end=end - timedelta(seconds=1)
    )
    return list(client.get_stock_bars(request)[symbol])  # type: ignore[index]


def test_stock_bars_follow_the_regular_session_and_its_early_closes(keys: None) -> None:
    """Stock minutes from 04:00 to 20:00 New York on three days, one of them an early close at 13:00: the
    hourly bars hold only the session's minutes (9:00 from 9:30, ..., the last cut at the close) and the
    daily bar is the session, labelled at midnight New York, as Alpaca's own."""
    days = [date(2024, 7, 1), date(2024, 7, 2), date(2024, 7, 3)]
    calendar = [(days[0], "09:30", "16:00"), (days[1], "09:30", "16:00"), (days[2], "09:30", "13:00")]
    minutes: list[MinuteBar] = []
    for day in days:
        first = datetime.combine(day, dtime(4, 0), NEW_YORK).astimezone(UTC)
        minutes += minute_bars(ROWS[len(minutes) : len(minutes) + 960], first)
    now = datetime.combine(days[2], dtime(20, 0), NEW_YORK).astimezone(UTC)
    with FakeAlpaca(key=KEY, secret=SECRET, now=now, calendar=calendar, assets={"AAPL": {}}) as fake:
        fake.add_history("AAPL", minutes)

        async def scenario() -> None:
            for timeframe, unit in ((HOUR, TimeFrameUnit.Hour), (timedelta(days=1), TimeFrameUnit.Day)):
                config = AlpacaFeedConfig(
                    asset_class="stock",
                    stream_url=fake.data_stream_url,
                    rest_url=fake.rest_url,
                    clock_url=fake.rest_url,
                    max_clock_skew_seconds=1e9,
                )
                feed = config.build(FeedContext({"AAPL": timeframe}))
                await feed.start()
                start = datetime.combine(days[0], dtime(0, 0), NEW_YORK).astimezone(UTC)
                bars = await feed.history("AAPL", start, now)
                theirs = stock_rest_bars(fake, "AAPL", unit, start, now)
                assert len(bars) == len(theirs) == (7 + 7 + 4 if unit is TimeFrameUnit.Hour else 3)
                for bar, rest in zip(bars, theirs, strict=True):
                    same(bar, rest)
                await feed.close()

        asyncio.run(scenario())
    first_hour = datetime.combine(days[0], dtime(9, 0), NEW_YORK).astimezone(UTC)
    assert first_hour.hour == 13  # 9:00 New York in summer: the bundled hourly data's labels


def test_a_skewed_host_clock_is_alerted(market: tuple[FakeAlpaca, list[MinuteBar]]) -> None:
    fake, _ = market  # the fake's clock is in 2022

    async def scenario() -> None:
        feed = feed_for(fake, max_clock_skew_seconds=5.0)
        await feed.start()
        consumer = Consumer(feed)
        await consumer.until(lambda c: any(isinstance(i, Alert) and i.kind == "clock_skew" for i in c.items))
        (alert,) = [i for i in consumer.items if isinstance(i, Alert)]
        assert alert.details["skew_seconds"] < -3600 * 24 * 365  # the host is years ahead of the venue
        await consumer.close()

    asyncio.run(scenario())
