"""The Alpaca broker against the fake Alpaca, through alpaca-py's real clients: each order is posted once,
whatever the answer; a duplicate id is adopted, a 429 sent again, a lost answer left UNKNOWN; nothing is
sent while the order stream is down; the venue's rules and positions in paperbot's words."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from alpaca_harness import KEY, SECRET
from fake_alpaca import FakeAlpaca, MinuteBar

from bot.brokers import BrokerContext, BrokerStatus
from bot.brokers.alpaca import AlpacaBroker, AlpacaBrokerConfig
from bot.errors import BrokerError, BrokerUnavailableError, ConfigError
from bot.orders import OrderIntent, OrderStatus, OrderUpdate, Side, client_order_id

T0 = datetime(2024, 3, 5, 15, 0, tzinfo=UTC)  # a Tuesday, 10:00 in New York: the session is open


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAlpaca]:
    monkeypatch.setenv("APCA_API_KEY_ID", KEY)
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET)
    assets = {"AAPL": {}, "IBM": {"fractionable": False}}
    with FakeAlpaca(key=KEY, secret=SECRET, now=T0, assets=assets) as market:
        yield market
        assert market.server_errors == []


def broker_for(fake: FakeAlpaca, **overrides: object) -> AlpacaBroker:
    config = AlpacaBrokerConfig(url=fake.rest_url, stream_url=fake.trading_stream_url, **overrides)  # type: ignore[arg-type]
    return config.build(BrokerContext(["AAPL", "IBM"]))


def intent(symbol: str = "AAPL", qty: str = "3", n: int = 0) -> OrderIntent:
    return OrderIntent(client_order_id("paper", "s", symbol, T0, n), "s", symbol, Side.BUY, Decimal(qty), T0)


def minute(t: datetime, price: float) -> MinuteBar:
    return MinuteBar(t, price, price + 0.5, price - 0.5, price + 0.25, 1000)


async def updates(broker: AlpacaBroker, count: int) -> list[OrderUpdate]:
    got: list[OrderUpdate] = []
    async with asyncio.timeout(10):
        async for event in broker.events:
            if isinstance(event, OrderUpdate):
                got.append(event)
                if len(got) == count:
                    return got
    return got


def test_an_order_is_posted_once_and_its_fills_arrive_as_events(fake: FakeAlpaca) -> None:
    async def scenario() -> None:
        broker = broker_for(fake)
        await broker.start()
        rules = broker.market_rules("AAPL")
        assert rules is not None and rules.lot_size == Decimal("0.000000001") and rules.min_notional == 1
        whole = broker.market_rules("IBM")
        assert whole is not None and whole.lot_size == 1 and whole.qty_precision == 0
        fake.partial_fills = [0.5, 0.5]
        order = await broker.submit(intent())
        assert (order.status, order.filled_qty) == (OrderStatus.NEW, 0)
        fake.publish("AAPL", minute(T0 + timedelta(minutes=1), 170.0))
        fake.publish("AAPL", minute(T0 + timedelta(minutes=2), 171.0))
        events = await updates(broker, 3)  # new, partial_fill, fill
        fills = [e.fill for e in events if e.fill is not None]
        assert [f.price for f in fills] == [170, 171]
        assert sum(f.qty for f in fills) == 3
        assert events[-1].order is not None and events[-1].order.status is OrderStatus.FILLED
        # The same executions through the activities endpoint carry the same ids.
        again = await broker.fills_since(T0)
        assert [f.broker_fill_id for f in again] == [f.broker_fill_id for f in fills]
        assert await broker.positions() == {"AAPL": Decimal(3)}
        assert (await broker.account()).cash == Decimal(100_000) - sum(f.qty * f.price for f in fills)
        assert [p["client_order_id"] for p in fake.order_posts] == [intent().client_order_id]
        await broker.close()

    asyncio.run(scenario())


def test_a_duplicate_client_order_id_is_adopted_not_doubled(fake: FakeAlpaca) -> None:
    async def scenario() -> None:
        broker = broker_for(fake)
        await broker.start()
        first = await broker.submit(intent())
        second = await broker.submit(intent())  # Alpaca answers 422 "client_order_id must be unique"
        assert second.broker_order_id == first.broker_order_id
        assert len(fake.order_posts) == 2
        assert len(fake.orders) == 1
        await broker.close()

    asyncio.run(scenario())


def test_a_504_is_unknown_and_never_reposted(fake: FakeAlpaca) -> None:
    async def scenario() -> None:
        broker = broker_for(fake)
        await broker.start()
        fake.fail_next_submit(504, accept=True)
        with pytest.raises(BrokerError, match="504 Gateway Time-out"):
            await broker.submit(intent())
        assert len(fake.order_posts) == 1, "alpaca-py's own retry of a 504 is off for orders"
        known = await broker.order_by_client_id(intent().client_order_id)
        assert known is not None and known.status is OrderStatus.NEW  # it was taken: reconciliation adopts it

        fake.fail_next_submit(503, accept=False)
        with pytest.raises(BrokerError):
            await broker.submit(intent(n=1))
        assert await broker.order_by_client_id(intent(n=1).client_order_id) is None  # never arrived
        await broker.close()

    asyncio.run(scenario())


def test_a_429_is_sent_again_and_a_refusal_is_a_rejection(fake: FakeAlpaca) -> None:
    async def scenario() -> None:
        broker = broker_for(fake)
        await broker.start()
        fake.publish("AAPL", minute(T0, 170.0))  # a price, for the buying-power check
        fake.respond_429(1)
        order = await broker.submit(intent())
        assert order.status is OrderStatus.NEW
        assert len(fake.order_posts) == 2  # a 429 was not taken: safe to send again
        refused = await broker.submit(intent("AAPL", "100000", n=1))  # far beyond the cash
        assert refused.status is OrderStatus.REJECTED
        assert refused.reason is not None and "insufficient buying power" in refused.reason
        await broker.close()

    asyncio.run(scenario())


def test_nothing_is_sent_while_the_order_stream_is_down(fake: FakeAlpaca) -> None:
    async def scenario() -> None:
        broker = broker_for(fake)
        await broker.start()
        assert fake.drop_trading_connections() == 1
        async with asyncio.timeout(10):
            async for event in broker.events:
                if isinstance(event, BrokerStatus) and not event.connected:
                    break
        with pytest.raises(BrokerUnavailableError):
            await broker.submit(intent())
        assert fake.order_posts == []
        async with asyncio.timeout(15):  # alpaca-py reconnects by itself; the engine then reconciles
            async for event in broker.events:
                if isinstance(event, BrokerStatus) and event.connected:
                    break
        assert (await broker.submit(intent())).status is OrderStatus.NEW
        await broker.close()

    asyncio.run(scenario())


def test_a_backtest_or_an_unknown_symbol_is_refused(fake: FakeAlpaca) -> None:
    config = AlpacaBrokerConfig(url=fake.rest_url, stream_url=fake.trading_stream_url)
    with pytest.raises(ConfigError, match='kind = "sim"'):
        config.build(BrokerContext(["AAPL"], backtest=True))

    async def scenario() -> None:
        broker = config.build(BrokerContext(["NOPE"]))
        with pytest.raises(ConfigError, match="config error at broker: Alpaca refused"):
            await broker.start()
        await broker.close()

    asyncio.run(scenario())
