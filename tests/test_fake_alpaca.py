"""The fake Alpaca market, driven only through the real alpaca-py 0.44 clients pointed at it by url_override.

Nothing here imports the bot: these tests pin what the fake speaks, so the daemon's own tests can trust it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest
from alpaca.common.exceptions import APIError
from alpaca.data.enums import DataFeed
from alpaca.data.historical import CryptoHistoricalDataClient, StockHistoricalDataClient
from alpaca.data.live import CryptoDataStream, StockDataStream
from alpaca.data.live.websocket import DataStream
from alpaca.data.models import Bar, BarSet
from alpaca.data.requests import CryptoBarsRequest, StockBarsRequest
from alpaca.data.timeframe import TimeFrame
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import AssetClass, AssetStatus, OrderSide, OrderStatus, TimeInForce, TradeEvent
from alpaca.trading.models import Asset, Calendar, Clock, Order, Position, TradeAccount, TradeUpdate
from alpaca.trading.requests import GetAssetsRequest, GetCalendarRequest, MarketOrderRequest
from alpaca.trading.stream import TradingStream
from fake_alpaca import FakeAlpaca, MinuteBar

# Tuesday 2024-03-05 09:30 New York (EST, UTC-5): the regular session has just opened.
OPEN = datetime(2024, 3, 5, 14, 30, tzinfo=UTC)
KEY, SECRET = "test-key-id", "test-secret-key"
NEW_YORK = ZoneInfo("America/New_York")
M = TypeVar("M")


def model(value: object, kind: type[M]) -> M:
    """alpaca-py returns `Model | dict`: insist on the model, i.e. that the answer parsed in non-raw mode."""
    assert isinstance(value, kind), f"expected {kind.__name__}, got {type(value).__name__}"
    return value


def models(value: object, kind: type[M]) -> list[M]:
    """`model` for list answers."""
    assert isinstance(value, list)
    return [model(item, kind) for item in value]


def raw(value: object) -> Any:
    """An answer of the clients' plain `.get()`, which returns the decoded JSON."""
    assert isinstance(value, dict | list)
    return value


def minute(t: datetime, o: float, c: float | None = None, v: float = 100, n: int = 3) -> MinuteBar:
    """A minute bar opening at `o`, closing at `c` (default o + 0.5), with a high/low around both."""
    close = o + 0.5 if c is None else c
    return MinuteBar(t, o, max(o, close) + 0.25, min(o, close) - 0.25, close, v, n, (o + close) / 2)


def at_new_york(day: date, hour: int, minute_: int = 0) -> datetime:
    return datetime.combine(day, dtime(hour, minute_), NEW_YORK).astimezone(UTC)


@pytest.fixture
def fake() -> Iterator[FakeAlpaca]:
    with FakeAlpaca(now=OPEN, assets={"AAPL": {}, "MSFT": {"fractionable": False}}) as market:
        yield market
        assert market.server_errors == []


@pytest.fixture
def crypto() -> Iterator[FakeAlpaca]:
    with FakeAlpaca(asset_class="crypto", now=OPEN, cash=Decimal(50000), assets={"BTC/USD": {}}) as market:
        yield market
        assert market.server_errors == []


@pytest.fixture
def trading(fake: FakeAlpaca) -> Iterator[TradingClient]:
    client = TradingClient(KEY, SECRET, paper=True, url_override=fake.rest_url)
    yield client
    client._session.close()


def order_request(
    cid: str, qty: float = 10, side: OrderSide = OrderSide.BUY, symbol: str = "AAPL"
) -> MarketOrderRequest:
    tif = TimeInForce.GTC if "/" in symbol else TimeInForce.DAY
    return MarketOrderRequest(symbol=symbol, qty=qty, side=side, time_in_force=tif, client_order_id=cid)


def start_stream(stream: DataStream | TradingStream) -> asyncio.Task[None]:
    """Run a stream in the current loop: `run()` calls asyncio.run, so the daemon uses `_run_forever()`."""
    return asyncio.create_task(stream._run_forever())


async def stop_stream(stream: DataStream | TradingStream, task: asyncio.Task[None]) -> None:
    """stop_ws() only takes effect once recv() returns (up to 5 s); closing the socket makes that now."""
    await stream.stop_ws()
    await stream.close()
    await asyncio.wait_for(task, 5)


# ---------------------------------------------------------------------------------------------- trading REST


def test_account_clock_calendar_and_assets_parse_in_model_mode(
    fake: FakeAlpaca, trading: TradingClient
) -> None:
    account = model(trading.get_account(), TradeAccount)
    assert account.status == "ACTIVE" and account.currency == "USD" and account.crypto_status == "ACTIVE"
    assert account.cash == account.buying_power == account.equity == account.portfolio_value == "100000"
    assert account.trading_blocked is False and account.multiplier == "1"

    clock = model(trading.get_clock(), Clock)
    assert clock.is_open and clock.timestamp == OPEN
    assert clock.next_close == datetime(2024, 3, 5, 21, 0, tzinfo=UTC)
    assert clock.next_open == datetime(2024, 3, 6, 14, 30, tzinfo=UTC)
    fake.set_now(datetime(2024, 3, 9, 15, 0, tzinfo=UTC))  # a Saturday
    clock = model(trading.get_clock(), Clock)
    assert not clock.is_open
    assert clock.next_open == datetime(2024, 3, 11, 13, 30, tzinfo=UTC)  # Monday, now in EDT

    days = models(
        trading.get_calendar(GetCalendarRequest(start=date(2024, 3, 4), end=date(2024, 3, 10))), Calendar
    )
    assert [d.date for d in days] == [date(2024, 3, d) for d in range(4, 9)]
    assert days[0].open == datetime(2024, 3, 4, 9, 30) and days[0].close == datetime(2024, 3, 4, 16, 0)

    asset = model(trading.get_asset("AAPL"), Asset)
    assert asset.symbol == "AAPL" and asset.asset_class == AssetClass.US_EQUITY and asset.fractionable
    active = GetAssetsRequest(status=AssetStatus.ACTIVE, asset_class=AssetClass.US_EQUITY)
    assert [a.symbol for a in models(trading.get_all_assets(active), Asset)] == ["AAPL", "MSFT"]
    assert not model(trading.get_asset("MSFT"), Asset).fractionable
    with pytest.raises(APIError) as missing:
        trading.get_asset("NOPE")
    assert missing.value.status_code == 404


def test_crypto_asset_clock_and_order_use_alpacas_symbol_spellings(crypto: FakeAlpaca) -> None:
    client = TradingClient(KEY, SECRET, url_override=crypto.rest_url)
    asset = model(client.get_asset("BTC/USD"), Asset)
    assert asset.symbol == "BTC/USD" and asset.asset_class == AssetClass.CRYPTO
    assert asset.min_order_size is not None and asset.min_trade_increment is not None
    crypto.set_now(datetime(2024, 3, 9, 3, 0, tzinfo=UTC))  # Saturday night: crypto trades anyway
    assert model(client.get_clock(), Clock).is_open

    crypto.publish("BTC/USD", minute(crypto.now - timedelta(minutes=1), 60000))
    order = model(client.submit_order(order_request("btc-1", qty=0.25, symbol="BTC/USD")), Order)
    assert order.symbol == "BTC/USD" and order.status == OrderStatus.ACCEPTED
    crypto.publish("BTC/USD", minute(crypto.now, 60100))
    assert model(client.get_order_by_client_id("btc-1"), Order).status == OrderStatus.FILLED
    (position,) = models(client.get_all_positions(), Position)
    assert position.symbol == "BTCUSD" and position.qty == "0.25" and position.avg_entry_price == "60100"
    assert model(client.get_open_position("BTC/USD"), Position).symbol == "BTCUSD"
    assert crypto.cash == Decimal(50000) - Decimal("0.25") * 60100
    with pytest.raises(APIError) as too_much:
        client.submit_order(order_request("btc-2", qty=1, side=OrderSide.SELL, symbol="BTC/USD"))
    assert too_much.value.status_code == 403
    client._session.close()


def test_market_order_fills_at_the_next_published_minutes_open(
    fake: FakeAlpaca, trading: TradingClient
) -> None:
    fake.publish("AAPL", minute(OPEN, 100.0))  # the clock moves to 09:31
    submitted = model(trading.submit_order(order_request("cid-1", qty=10)), Order)
    assert submitted.status == OrderStatus.ACCEPTED and submitted.filled_qty == "0"
    assert fake.orders["cid-1"]["status"] == "new"
    assert model(trading.get_order_by_client_id("cid-1"), Order).filled_avg_price is None

    fake.publish("AAPL", minute(OPEN + timedelta(minutes=1), 101.0, 102.0))
    order = model(trading.get_order_by_client_id("cid-1"), Order)
    assert order.status == OrderStatus.FILLED
    assert order.filled_qty == "10" and order.filled_avg_price == "101"
    assert order.filled_at == OPEN + timedelta(minutes=1)
    assert model(trading.get_order_by_id(order.id), Order).client_order_id == "cid-1"

    (position,) = models(trading.get_all_positions(), Position)
    assert position.symbol == "AAPL" and position.qty == "10" and position.side == "long"
    assert position.avg_entry_price == "101" and position.market_value == "1020"  # marked at the last close
    account = model(trading.get_account(), TradeAccount)
    assert account.cash == "98990" and account.equity == "100010"
    assert fake.cash == Decimal(98990) and fake.positions() == {"AAPL": Decimal(10)}

    (fill,) = raw(trading.get("/account/activities/FILL", {"direction": "asc"}))
    assert fill["activity_type"] == "FILL" and fill["type"] == "fill"
    assert (fill["price"], fill["qty"], fill["cum_qty"], fill["leaves_qty"]) == ("101", "10", "10", "0")
    assert fill["order_id"] == str(order.id) and fill["order_status"] == "filled"
    assert fill["id"].startswith("20240305093100000::")
    assert raw(trading.get("/account/activities", {"activity_types": "FILL"})) == [fill]


def test_partial_fills_stream_new_then_partial_fill_then_fill(
    fake: FakeAlpaca, trading: TradingClient
) -> None:
    fake.partial_fills = [0.4, 0.6]
    fake.publish("AAPL", minute(OPEN, 100.0))
    updates: list[TradeUpdate] = []

    async def main() -> None:
        stream = TradingStream(KEY, SECRET, paper=True, url_override=fake.trading_stream_url)

        async def on_update(update: TradeUpdate) -> None:
            updates.append(model(update, TradeUpdate))

        stream.subscribe_trade_updates(on_update)
        task = start_stream(stream)
        assert await fake.async_wait_until(lambda: fake.trading_listeners == 1)
        await asyncio.to_thread(trading.submit_order, order_request("part-1", qty=10))
        fake.publish("AAPL", minute(OPEN + timedelta(minutes=1), 101.0))
        fake.publish("AAPL", minute(OPEN + timedelta(minutes=2), 103.0))
        assert await fake.async_wait_until(lambda: len(updates) == 3)
        await stop_stream(stream, task)

    asyncio.run(main())
    assert [u.event for u in updates] == [TradeEvent.NEW, TradeEvent.PARTIAL_FILL, TradeEvent.FILL]
    _, partial, full = updates
    assert (partial.qty, partial.price, partial.position_qty) == (4, 101, 4)
    assert (full.qty, full.price, full.position_qty) == (6, 103, 10)
    assert partial.execution_id != full.execution_id
    assert partial.order.status == OrderStatus.PARTIALLY_FILLED and partial.order.filled_qty == "4"
    assert full.order.status == OrderStatus.FILLED and full.order.filled_avg_price == "102.2"

    rows = raw(trading.get("/account/activities/FILL", {"direction": "asc", "page_size": 1}))
    assert [(r["type"], r["qty"], r["cum_qty"], r["leaves_qty"]) for r in rows] == [
        ("partial_fill", "4", "4", "6")
    ]
    rest = raw(trading.get("/account/activities/FILL", {"direction": "asc", "page_token": rows[0]["id"]}))
    assert [(r["type"], r["qty"], r["cum_qty"], r["leaves_qty"]) for r in rest] == [("fill", "6", "10", "0")]
    assert [e.execution_id for e in fake.executions] == [str(partial.execution_id), str(full.execution_id)]
    assert fake.cash == Decimal(100000) - 4 * 101 - 6 * 103


def test_rejections_cancels_and_expiries_reach_the_trade_updates_stream(
    fake: FakeAlpaca, trading: TradingClient
) -> None:
    updates: list[TradeUpdate] = []

    async def main() -> None:
        stream = TradingStream(KEY, SECRET, url_override=fake.trading_stream_url)

        async def on_update(update: TradeUpdate) -> None:
            updates.append(model(update, TradeUpdate))

        stream.subscribe_trade_updates(on_update)
        task = start_stream(stream)
        assert await fake.async_wait_until(lambda: fake.trading_listeners == 1)
        fake.reject_next_order("halted")
        await asyncio.to_thread(trading.submit_order, order_request("rej"))
        cancel_me = model(await asyncio.to_thread(trading.submit_order, order_request("cxl")), Order)
        await asyncio.to_thread(trading.cancel_order_by_id, cancel_me.id)
        await asyncio.to_thread(trading.submit_order, order_request("exp"))
        fake.set_now(at_new_york(OPEN.date(), 16))
        assert await fake.async_wait_until(lambda: len(updates) == 5)
        await stop_stream(stream, task)

    asyncio.run(main())
    seen = [(u.order.client_order_id, u.event, u.order.status) for u in updates]
    assert seen == [
        ("rej", TradeEvent.REJECTED, OrderStatus.REJECTED),
        ("cxl", TradeEvent.NEW, OrderStatus.NEW),
        ("cxl", TradeEvent.CANCELED, OrderStatus.CANCELED),
        ("exp", TradeEvent.NEW, OrderStatus.NEW),
        ("exp", TradeEvent.EXPIRED, OrderStatus.EXPIRED),
    ]
    assert updates[-1].timestamp == at_new_york(OPEN.date(), 16)


def test_duplicate_client_order_id_is_a_422(fake: FakeAlpaca, trading: TradingClient) -> None:
    trading.submit_order(order_request("dup"))
    with pytest.raises(APIError) as err:
        trading.submit_order(order_request("dup"))
    assert err.value.status_code == 422
    assert err.value.message == "client_order_id must be unique" and err.value.code == 40010001
    assert len(fake.order_posts) == 2 and list(fake.orders) == ["dup"]


def test_order_validation_errors_look_like_alpacas(fake: FakeAlpaca, trading: TradingClient) -> None:
    fake.publish("AAPL", minute(OPEN, 100.0))
    with pytest.raises(APIError) as poor:
        trading.submit_order(order_request("big", qty=2000))
    assert poor.value.status_code == 403 and poor.value.message == "insufficient buying power"
    with pytest.raises(APIError) as unknown:
        trading.submit_order(order_request("unknown", symbol="ZZZZ"))
    assert unknown.value.status_code == 422
    with pytest.raises(APIError) as fraction:
        trading.submit_order(order_request("frac", qty=1.5, symbol="MSFT"))
    assert fraction.value.status_code == 422
    assert [p["client_order_id"] for p in fake.order_posts] == ["big", "unknown", "frac"]
    assert fake.orders == {}


def test_day_orders_wait_for_the_bell_and_expire_at_the_close(
    fake: FakeAlpaca, trading: TradingClient
) -> None:
    day = date(2024, 3, 6)
    fake.set_now(at_new_york(day, 8))
    assert model(trading.submit_order(order_request("early")), Order).status == OrderStatus.ACCEPTED
    assert fake.orders["early"]["status"] == "accepted"  # the market is closed: no "new" yet
    fake.set_now(at_new_york(day, 9, 30))
    assert fake.orders["early"]["status"] == "new"
    fake.publish("MSFT", minute(at_new_york(day, 9, 30), 300.0))  # another symbol fills nothing here
    fake.set_now(at_new_york(day, 16))
    expired = model(trading.get_order_by_client_id("early"), Order)
    assert expired.status == OrderStatus.EXPIRED and expired.expired_at == at_new_york(day, 16)
    assert [o.client_order_id for o in models(trading.get_orders(), Order)] == []


def test_set_position_changes_holdings_behind_the_clients_back(
    fake: FakeAlpaca, trading: TradingClient
) -> None:
    fake.publish("MSFT", minute(OPEN, 300.0))
    fake.set_position("MSFT", -5, avg_entry_price=Decimal(310))
    (short,) = models(trading.get_all_positions(), Position)
    assert (short.symbol, short.qty, short.side, short.market_value) == ("MSFT", "-5", "short", "-1502.5")
    assert short.unrealized_pl == "47.5"
    fake.set_position("MSFT", 0)
    assert models(trading.get_all_positions(), Position) == []
    with pytest.raises(APIError) as none:
        trading.get_open_position("MSFT")
    assert none.value.status_code == 404


# ---------------------------------------------------------------------------------------------- REST faults


def test_a_504_after_the_engine_took_the_order_comes_back_as_a_duplicate(fake: FakeAlpaca) -> None:
    client = TradingClient(KEY, SECRET, url_override=fake.rest_url)  # default retries: 504 three times
    client._retry_wait = 0  # alpaca-py sleeps 3 s between tries; the re-POST is what matters here
    fake.fail_next_submit(504, accept=True)
    with pytest.raises(APIError) as err:
        client.submit_order(order_request("gw-1"))
    assert err.value.status_code == 422 and err.value.message == "client_order_id must be unique"
    assert [p["client_order_id"] for p in fake.order_posts] == ["gw-1", "gw-1"]
    assert list(fake.orders) == ["gw-1"]
    fake.publish("AAPL", minute(OPEN, 100.0))
    assert model(client.get_order_by_client_id("gw-1"), Order).status == OrderStatus.FILLED
    assert len(fake.executions) == 1
    client._session.close()


def test_a_504_is_nginxs_html_page_when_retries_run_out(fake: FakeAlpaca, trading: TradingClient) -> None:
    trading._retry = 0
    fake.fail_next_submit(504, accept=False)
    with pytest.raises(APIError) as err:
        trading.submit_order(order_request("gw-2"))
    assert err.value.status_code == 504 and "504 Gateway Time-out" in str(err.value)
    assert fake.orders == {}
    fake.fail_next_submit(503, accept=False)
    with pytest.raises(APIError) as unavailable:
        trading.submit_order(order_request("gw-3"))
    assert unavailable.value.status_code == 503 and unavailable.value.code == 50310000


def test_a_delayed_submit_creates_the_order_before_answering(
    fake: FakeAlpaca, trading: TradingClient
) -> None:
    fake.delay_next_submit(0.4)
    answers: list[object] = []
    started = time.monotonic()
    caller = threading.Thread(target=lambda: answers.append(trading.submit_order(order_request("slow"))))
    caller.start()
    assert fake.wait_until(lambda: "slow" in fake.orders, timeout=2)
    assert caller.is_alive() and answers == []  # the venue has the order; the client is still waiting
    caller.join(5)
    assert time.monotonic() - started >= 0.4
    assert model(answers[0], Order).client_order_id == "slow"


def test_rate_limit_rejection_and_cancel(fake: FakeAlpaca, trading: TradingClient) -> None:
    trading._retry_wait = 0
    fake.respond_429(2)
    assert model(trading.get_account(), TradeAccount).status == "ACTIVE"  # two 429s, then an answer
    assert [r[1] for r in fake.requests] == ["/v2/account"] * 3

    fake.reject_next_order("no reason")
    assert model(trading.submit_order(order_request("rej")), Order).status == OrderStatus.ACCEPTED
    rejected = model(trading.get_order_by_client_id("rej"), Order)
    assert rejected.status == OrderStatus.REJECTED and rejected.failed_at is not None
    assert fake.reject_reasons == {"rej": "no reason"}

    open_order = model(trading.submit_order(order_request("cxl")), Order)
    trading.cancel_order_by_id(open_order.id)
    assert model(trading.get_order_by_client_id("cxl"), Order).status == OrderStatus.CANCELED
    with pytest.raises(APIError) as again:
        trading.cancel_order_by_id(open_order.id)
    assert again.value.status_code == 422 and again.value.message == 'order is already in "canceled" state'
    with pytest.raises(APIError) as missing:
        trading.get_order_by_client_id("never")
    assert missing.value.status_code == 404 and missing.value.message == "order not found"


def test_wrong_keys_get_401(fake: FakeAlpaca) -> None:
    client = TradingClient(KEY, "wrong-secret", url_override=fake.rest_url)
    with pytest.raises(APIError) as err:
        client.get_account()
    assert err.value.status_code == 401 and err.value.code == 40110000
    assert err.value.message == "request is not authorized"
    data = StockHistoricalDataClient("wrong-key", SECRET, url_override=fake.data_url)
    with pytest.raises(APIError) as data_err:
        data.get_stock_bars(StockBarsRequest(symbol_or_symbols="AAPL", timeframe=TimeFrame.Minute))
    assert data_err.value.status_code == 401
    client._session.close()
    data._session.close()


# ------------------------------------------------------------------------------------------- market data REST


def _session_minutes(days: int) -> list[datetime]:
    """Regular-session minute starts (UTC) of `days` weekdays from 2024-03-05, across the DST switch."""
    out: list[datetime] = []
    day = OPEN.date()
    while len(out) < days * 390:
        if day.weekday() < 5:
            bell = at_new_york(day, 9, 30)
            out.extend(bell + timedelta(minutes=i) for i in range(390))
        day += timedelta(days=1)
    return out


def test_stock_bars_paginate_and_hours_aggregate_the_session_minutes(fake: FakeAlpaca) -> None:
    times = _session_minutes(27)  # 10,530 minutes: more than alpaca-py's 10,000-bar page
    aapl = [minute(t, 100 + (i % 97) * 0.5, v=100 + i % 7) for i, t in enumerate(times)]
    premarket = [minute(OPEN - timedelta(minutes=m), 90.0) for m in range(30, 0, -1)]
    fake.add_history("AAPL", premarket + aapl)
    fake.add_history("MSFT", [minute(t, 300.0) for t in times[:390]])
    fake.set_now(times[-1] + timedelta(minutes=1))
    client = StockHistoricalDataClient(KEY, SECRET, url_override=fake.data_url)
    start, end = OPEN - timedelta(hours=1), times[-1]

    everything = model(
        client.get_stock_bars(
            StockBarsRequest(
                symbol_or_symbols=["AAPL", "MSFT"], timeframe=TimeFrame.Minute, start=start, end=end
            )
        ),
        BarSet,
    )
    assert len(everything["AAPL"]) == 30 + len(times) and len(everything["MSFT"]) == 390
    bar_pages = [r[2] for r in fake.requests if r[1] == "/v2/stocks/bars"]
    assert len(bar_pages) == 2 and bar_pages[1]["page_token"]

    capped = model(
        client.get_stock_bars(
            StockBarsRequest(
                symbol_or_symbols=["MSFT", "AAPL"], timeframe=TimeFrame.Minute, start=start, limit=250
            )
        ),
        BarSet,
    )
    assert len(capped["AAPL"]) == 250 and "MSFT" not in capped.data  # the limit spans symbols, AAPL first

    pages: list[dict[str, Any]] = []
    token = None
    while True:
        query = {"symbols": "MSFT", "timeframe": "1Min", "start": OPEN.isoformat(), "limit": 100}
        page = raw(client.get("/stocks/bars", query | {"page_token": token}))
        pages.append(page)
        token = page["next_page_token"]
        if token is None:
            break
    assert [len(p["bars"]["MSFT"]) for p in pages] == [100, 100, 100, 90]

    hourly = model(
        client.get_stock_bars(
            StockBarsRequest(symbol_or_symbols="AAPL", timeframe=TimeFrame.Hour, start=start, end=end)
        ),
        BarSet,
    )["AAPL"]
    expected: dict[datetime, list[MinuteBar]] = {}
    for bar in aapl:  # the pre-market minutes do not count
        expected.setdefault(bar.t.replace(minute=0), []).append(bar)
    assert [b.timestamp for b in hourly] == sorted(expected)
    for got in hourly:
        bars = expected[got.timestamp]
        volume = sum(b.v for b in bars)
        assert (got.open, got.close) == (bars[0].o, bars[-1].c)
        assert (got.high, got.low) == (max(b.h for b in bars), min(b.l for b in bars))
        assert (got.volume, got.trade_count) == (volume, sum(b.n for b in bars))
        assert got.vwap == pytest.approx(sum((b.vw or b.c) * b.v for b in bars) / volume)
    assert hourly[0].timestamp == datetime(2024, 3, 5, 14, 0, tzinfo=UTC)  # 09:00 New York holds 09:30-09:59

    # Bars are kept when their label lies in [start, end]: a day bar is labelled at midnight New York.
    midnight = datetime(2024, 3, 5, tzinfo=UTC)
    daily = model(
        client.get_stock_bars(
            StockBarsRequest(symbol_or_symbols="AAPL", timeframe=TimeFrame.Day, start=midnight, end=end)
        ),
        BarSet,
    )["AAPL"]
    assert len(daily) == 27 and daily[0].timestamp == datetime(2024, 3, 5, 5, 0, tzinfo=UTC)
    assert daily[5].timestamp == datetime(2024, 3, 12, 4, 0, tzinfo=UTC)  # EDT from 2024-03-10
    assert daily[0].volume == sum(b.v for b in aapl[:390])
    client._session.close()


def test_crypto_bars_come_from_the_v1beta3_endpoint_without_look_ahead(crypto: FakeAlpaca) -> None:
    crypto.add_history("BTC/USD", [minute(OPEN + timedelta(minutes=i), 60000 + i, v=0.5) for i in range(120)])
    crypto.set_now(OPEN + timedelta(minutes=90))  # minutes that have not ended stay invisible
    client = CryptoHistoricalDataClient(KEY, SECRET, url_override=crypto.data_url)
    bars = model(
        client.get_crypto_bars(
            CryptoBarsRequest(symbol_or_symbols="BTC/USD", timeframe=TimeFrame.Minute, start=OPEN)
        ),
        BarSet,
    )["BTC/USD"]
    assert len(bars) == 90 and bars[0].volume == 0.5
    hour_request = CryptoBarsRequest(
        symbol_or_symbols="BTC/USD", timeframe=TimeFrame.Hour, start=OPEN.replace(minute=0)
    )
    hours = model(client.get_crypto_bars(hour_request), BarSet)["BTC/USD"]
    assert [b.timestamp for b in hours] == [OPEN.replace(minute=0), OPEN.replace(hour=15, minute=0)]
    assert [b.volume for b in hours] == [15, 30]  # 14:30-14:59 and 15:00-15:59: 16:00 has not ended
    assert ("GET", "/v1beta3/crypto/us/bars") in [r[:2] for r in crypto.requests]
    client._session.close()


# ---------------------------------------------------------------------------------------------- websockets


def _stream_bars_and_correction(
    market: FakeAlpaca, stream: DataStream, symbol: str
) -> tuple[list[Bar], list[Bar]]:
    bars: list[Bar] = []
    updated: list[Bar] = []

    async def on_bar(bar: Bar | dict[Any, Any]) -> None:
        bars.append(model(bar, Bar))

    async def on_update(bar: Bar | dict[Any, Any]) -> None:
        updated.append(model(bar, Bar))

    async def main() -> None:
        assert isinstance(stream, StockDataStream | CryptoDataStream)
        stream.subscribe_bars(on_bar, symbol)
        stream.subscribe_updated_bars(on_update, symbol)
        task = start_stream(stream)
        assert await market.async_wait_until(lambda: market.data_subscribers("updatedBars", symbol) == 1)
        market.publish(symbol, minute(OPEN, 100.0))
        market.publish_many([(symbol, minute(OPEN + timedelta(minutes=1), 101.0))])
        market.publish_update(symbol, minute(OPEN, 100.0, 100.75))
        assert await market.async_wait_until(lambda: len(bars) == 2 and len(updated) == 1)
        await stop_stream(stream, task)

    asyncio.run(main())
    return bars, updated


def test_stock_data_stream_gets_bars_and_updated_bars(fake: FakeAlpaca) -> None:
    stream = StockDataStream(KEY, SECRET, feed=DataFeed.IEX, url_override=fake.data_stream_url)
    bars, updated = _stream_bars_and_correction(fake, stream, "AAPL")
    assert [(b.symbol, b.timestamp, b.open) for b in bars] == [
        ("AAPL", OPEN, 100.0),
        ("AAPL", OPEN + timedelta(minutes=1), 101.0),
    ]
    assert bars[0].volume == 100 and bars[0].trade_count == 3 and bars[0].vwap == 100.25
    assert (updated[0].timestamp, updated[0].close) == (OPEN, 100.75)
    assert fake.now == OPEN + timedelta(minutes=2)
    assert fake.data_connections == 1


def test_crypto_data_stream_gets_bars_and_updated_bars(crypto: FakeAlpaca) -> None:
    stream = CryptoDataStream(KEY, SECRET, url_override=crypto.data_stream_url)
    bars, updated = _stream_bars_and_correction(crypto, stream, "BTC/USD")
    assert [b.symbol for b in bars] == ["BTC/USD", "BTC/USD"] and bars[1].open == 101.0
    assert updated[0].symbol == "BTC/USD" and updated[0].close == 100.75


def test_a_second_data_connection_is_refused_with_406(
    fake: FakeAlpaca, caplog: pytest.LogCaptureFixture
) -> None:
    async def ignore(bar: Bar | dict[Any, Any]) -> None:
        del bar

    async def main() -> None:
        first = StockDataStream(KEY, SECRET, url_override=fake.data_stream_url)
        second = StockDataStream(KEY, SECRET, url_override=fake.data_stream_url)
        first.subscribe_bars(ignore, "AAPL")
        second.subscribe_bars(ignore, "MSFT")
        first_task = start_stream(first)
        assert await fake.async_wait_until(lambda: fake.data_connections == 1)
        second_task = start_stream(second)
        assert await fake.async_wait_until(lambda: fake.data_rejections == 1)
        await stop_stream(second, second_task)
        await stop_stream(first, first_task)

    with caplog.at_level(logging.ERROR, logger="alpaca.data.live.websocket"):
        asyncio.run(main())
    assert fake.data_connections == 1
    assert any("connection limit exceeded" in r.getMessage() for r in caplog.records)


def test_alpaca_py_reconnects_by_itself_after_a_drop_and_misses_what_was_sent_meanwhile(
    fake: FakeAlpaca,
) -> None:
    received: list[Bar] = []

    async def on_bar(bar: Bar | dict[Any, Any]) -> None:
        received.append(model(bar, Bar))

    async def main() -> None:
        stream = StockDataStream(KEY, SECRET, url_override=fake.data_stream_url)
        stream.subscribe_bars(on_bar, "AAPL")
        task = start_stream(stream)
        assert await fake.async_wait_until(lambda: fake.data_subscribers("bars", "AAPL") == 1)
        fake.publish("AAPL", minute(OPEN, 100.0))
        assert await fake.async_wait_until(lambda: len(received) == 1)
        assert fake.drop_data_connections() == 1
        fake.publish("AAPL", minute(OPEN + timedelta(minutes=1), 101.0))  # lost: nobody is connected
        assert await fake.async_wait_until(lambda: fake.data_subscribers("bars", "AAPL") == 1)
        fake.publish("AAPL", minute(OPEN + timedelta(minutes=2), 102.0))
        assert await fake.async_wait_until(lambda: len(received) == 2)
        await stop_stream(stream, task)

    asyncio.run(main())
    assert fake.data_connections == 2
    assert [b.open for b in received] == [100.0, 102.0]


def test_a_muted_data_socket_stays_open_and_says_nothing(fake: FakeAlpaca) -> None:
    received: list[Bar] = []

    async def on_bar(bar: Bar | dict[Any, Any]) -> None:
        received.append(model(bar, Bar))

    async def main() -> None:
        stream = StockDataStream(KEY, SECRET, url_override=fake.data_stream_url)
        stream.subscribe_bars(on_bar, "AAPL")
        task = start_stream(stream)
        assert await fake.async_wait_until(lambda: fake.data_subscribers("bars", "AAPL") == 1)
        fake.mute_data(True)
        fake.publish("AAPL", minute(OPEN, 100.0))
        await asyncio.sleep(0.2)
        assert received == [] and fake.data_subscribers("bars", "AAPL") == 1
        fake.mute_data(False)
        fake.publish("AAPL", minute(OPEN + timedelta(minutes=1), 101.0))
        assert await fake.async_wait_until(lambda: len(received) == 1)
        await stop_stream(stream, task)

    asyncio.run(main())
    assert [b.open for b in received] == [101.0] and fake.data_connections == 1
    assert fake.now == OPEN + timedelta(minutes=2)  # muted bars still count on the venue


def test_trade_updates_reconnect_after_a_drop_without_replaying(
    fake: FakeAlpaca, trading: TradingClient
) -> None:
    events: list[str] = []

    async def main() -> None:
        stream = TradingStream(KEY, SECRET, url_override=fake.trading_stream_url)

        async def on_update(update: TradeUpdate) -> None:
            events.append(str(model(update, TradeUpdate).event))

        stream.subscribe_trade_updates(on_update)
        task = start_stream(stream)
        assert await fake.async_wait_until(lambda: fake.trading_listeners == 1)
        assert fake.drop_trading_connections() == 1
        await asyncio.to_thread(trading.submit_order, order_request("while-away"))  # its "new" is lost
        assert await fake.async_wait_until(lambda: fake.trading_listeners == 1)
        fake.publish("AAPL", minute(OPEN, 100.0))
        assert await fake.async_wait_until(lambda: events == ["fill"])
        await stop_stream(stream, task)

    asyncio.run(main())
    assert fake.trading_connections == 2


def test_stopping_closes_ports_and_threads_even_with_clients_connected() -> None:
    before = set(threading.enumerate())
    fake = FakeAlpaca(now=OPEN, assets={"AAPL": {}})
    received: list[Bar] = []

    async def on_bar(bar: Bar | dict[Any, Any]) -> None:
        received.append(model(bar, Bar))

    async def main() -> None:
        stream = StockDataStream(KEY, SECRET, url_override=fake.data_stream_url)
        stream.subscribe_bars(on_bar, "AAPL")
        task = start_stream(stream)
        assert await fake.async_wait_until(lambda: fake.data_subscribers("bars", "AAPL") == 1)
        await asyncio.to_thread(fake.stop)  # the stream is still connected
        await stop_stream(stream, task)

    with fake:
        client = TradingClient(KEY, SECRET, url_override=fake.rest_url)
        model(client.get_account(), TradeAccount)  # leaves a keep-alive HTTP connection open
        ports = [urlsplit(fake.rest_url).port, urlsplit(fake.data_stream_url).port]
        asyncio.run(main())
    client._session.close()
    assert [t for t in threading.enumerate() if t not in before] == []
    for port in ports:
        assert port is not None
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
