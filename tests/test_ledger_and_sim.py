"""The books (Ledger) in exact Decimal, and the simulated broker that fills at the next bar's open."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction

import pytest

from bot.bars import Bar
from bot.brokers.base import Account
from bot.brokers.sim import SimBroker, SimBrokerConfig
from bot.ledger import Ledger, Position, Split
from bot.orders import (
    BrokerOrder,
    Fill,
    OpenOrder,
    OrderIntent,
    OrderStatus,
    OrderUpdate,
    Side,
    client_order_id,
    money,
    to_decimal,
)

T0 = datetime(2024, 1, 2, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
D = Decimal


# --------------------------------------------------------------------------------------------- ledger


def fill(side: Side, qty: str, price: str, commission: str, *, symbol: str = "AAPL", n: int = 0) -> Fill:
    return Fill(
        broker_fill_id=f"f{n}",
        client_order_id=f"c{n}",
        symbol=symbol,
        side=side,
        qty=D(qty),
        price=D(price),
        commission=D(commission),
        ts=T0 + n * HOUR,
    )


# Open, add, partial close, flip through zero, close to flat.
ROUND_TRIP = [
    fill(Side.BUY, "10", "100", "0.1", n=1),
    fill(Side.BUY, "5", "106", "0.053", n=2),
    fill(Side.SELL, "6", "110", "0.066", n=3),
    fill(Side.SELL, "14", "108", "0.1512", n=4),
    fill(Side.BUY, "5", "104", "0.052", n=5),
]


def test_fill_cash_delta_and_signed_qty() -> None:
    buy = fill(Side.BUY, "3", "10.5", "0.01")
    sell = fill(Side.SELL, "3", "10.5", "0.01")
    assert buy.cash_delta == D("-31.51")
    assert sell.cash_delta == D("31.49")
    assert buy.signed_qty == D(3)
    assert sell.signed_qty == D(-3)
    assert Side.BUY.sign == 1
    assert Side.SELL.sign == -1


def test_ledger_steps_through_open_add_reduce_flip_and_close() -> None:
    ledger = Ledger(D("10000"))
    assert ledger.cash == D("10000")
    assert ledger.position("AAPL") == Position("AAPL", D(0), D(0))

    expected = [
        # (qty, avg entry, cash) after each fill
        (D(10), D(100), D("8999.9")),  # opened
        (D(15), D(102), D("8469.847")),  # added: (10*100 + 5*106) / 15
        (D(9), D(102), D("9129.781")),  # partly closed: the entry price stays
        (D(-5), D(108), D("10641.6298")),  # flipped through zero: entry is the flip's price
        (D(0), D(0), D("10121.5778")),  # closed to flat
    ]
    for f, (qty, avg, cash) in zip(ROUND_TRIP, expected, strict=True):
        ledger.apply(f)
        assert ledger.position("AAPL") == Position("AAPL", qty, avg)
        assert ledger.qty("AAPL") == qty
        assert ledger.cash == cash
    assert ledger.positions() == {}
    assert ledger.equity({}) == D("10121.5778")


def test_cash_is_start_minus_buys_plus_sells_minus_commissions() -> None:
    ledger = Ledger.from_fills(D("10000"), ROUND_TRIP)
    buys = sum((f.qty * f.price for f in ROUND_TRIP if f.side is Side.BUY), D(0))
    sells = sum((f.qty * f.price for f in ROUND_TRIP if f.side is Side.SELL), D(0))
    commissions = sum((f.commission for f in ROUND_TRIP), D(0))
    assert (buys, sells, commissions) == (D(2050), D(2172), D("0.4222"))
    assert ledger.cash == D("10000") - buys + sells - commissions == D("10121.5778")


def test_from_fills_matches_applying_one_by_one() -> None:
    one_by_one = Ledger(D("500"))
    for f in ROUND_TRIP[:3]:
        one_by_one.apply(f)
    rebuilt = Ledger.from_fills(D("500"), ROUND_TRIP[:3])
    assert rebuilt.cash == one_by_one.cash == D("500") - D("1000.1") - D("530.053") + D("659.934")
    assert rebuilt.positions() == one_by_one.positions() == {"AAPL": Position("AAPL", D(9), D(102))}


def test_short_reduce_keeps_entry_and_add_to_short_averages() -> None:
    ledger = Ledger.from_fills(
        D(1000),
        [
            fill(Side.SELL, "4", "50", "0", n=1),
            fill(Side.SELL, "6", "55", "0", n=2),  # (4*50 + 6*55) / 10 = 53
            fill(Side.BUY, "3", "40", "0", n=3),
        ],
    )
    assert ledger.position("AAPL") == Position("AAPL", D(-7), D(53))
    assert ledger.cash == D(1000) + D(200) + D(330) - D(120)


def test_equity_and_exposure_with_marks() -> None:
    ledger = Ledger.from_fills(
        D("10000"),
        [
            *ROUND_TRIP[:2],  # long 15 AAPL at 102, cash 8469.847
            fill(Side.SELL, "20", "30", "0.06", symbol="MSFT", n=3),  # short 20 MSFT, cash + 599.94
        ],
    )
    assert ledger.cash == D("9069.787")
    marks = {"AAPL": D("104"), "MSFT": D("31.5")}
    assert ledger.positions_value(marks) == D(15 * 104) - D(20) * D("31.5") == D(930)
    assert ledger.equity(marks) == D("9069.787") + D(930) == D("9999.787")
    assert list(ledger.positions()) == ["AAPL", "MSFT"]
    assert ledger.positions()["MSFT"] == Position("MSFT", D(-20), D(30))


def test_missing_mark_for_an_open_position_raises() -> None:
    ledger = Ledger.from_fills(D(1000), [fill(Side.BUY, "1", "10", "0", symbol="AAPL")])
    with pytest.raises(KeyError, match="AAPL"):
        ledger.equity({"MSFT": D(1)})
    with pytest.raises(KeyError, match="AAPL"):
        ledger.positions_value({})


def test_flat_position_needs_no_mark() -> None:
    ledger = Ledger.from_fills(
        D(1000), [fill(Side.BUY, "2", "10", "0", n=1), fill(Side.SELL, "2", "12", "0", n=2)]
    )
    assert ledger.equity({}) == D(1004)


def test_money_and_to_decimal() -> None:
    assert money(D("1.234567895")) == D("1.23456790")  # half to even: ...89|5 -> ...90
    assert money(D("1.234567885")) == D("1.23456788")  # ...88|5 -> ...88
    assert money(D("2")).as_tuple().exponent == -8
    assert to_decimal(0.1) == D("0.1")  # not 0.1000000000000000055511151231257827...
    assert to_decimal(123.456789) == D("123.456789")


# --------------------------------------------------------------------------------------------- broker

CONFIG = SimBrokerConfig(starting_cash=D(100_000), commission_bps=D(10), slippage_bps=D(5))


def ohlc(ts: datetime, open_: float, symbol: str = "AAPL") -> Bar:
    return Bar(symbol, ts, open_, open_ * 1.01, open_ * 0.99, open_, 1_000.0)


def intent(
    side: Side, qty: str, bar_ts: datetime = T0, symbol: str = "AAPL", cid: str | None = None
) -> OrderIntent:
    return OrderIntent(
        client_order_id=cid or client_order_id("book", "s", symbol, bar_ts),
        strategy="s",
        symbol=symbol,
        side=side,
        qty=D(qty),
        bar_ts=bar_ts,
    )


def submit(broker: SimBroker, order: OrderIntent) -> BrokerOrder:
    return asyncio.run(broker.submit(order))


def step(broker: SimBroker, *bars: Bar) -> list[Fill]:
    """Hand the broker bars; the fills it reports as events (each with the order's final state)."""
    broker.observe_bars(bars)
    fills = []
    for event in broker.events.drain():
        assert isinstance(event, OrderUpdate) and event.fill is not None and event.order is not None
        assert event.order.status is OrderStatus.FILLED and event.ts == event.fill.ts
        fills.append(event.fill)
    return fills


def account(broker: SimBroker) -> Account:
    return asyncio.run(broker.account())


def status(broker: SimBroker, cid: str) -> OrderStatus | None:
    order = asyncio.run(broker.order_by_client_id(cid))
    return None if order is None else order.status


def all_fills(broker: SimBroker) -> list[Fill]:
    return asyncio.run(broker.fills_since(datetime.min.replace(tzinfo=UTC)))


def test_order_never_fills_on_its_own_bar_or_earlier() -> None:
    broker = SimBroker(CONFIG)
    order = intent(Side.BUY, "10", bar_ts=T0)
    accepted = submit(broker, order)
    assert accepted == BrokerOrder(order.client_order_id, "sim-" + order.client_order_id, OrderStatus.NEW)
    assert step(broker, ohlc(T0 - HOUR, 90.0)) == []
    assert step(broker, ohlc(T0, 95.0)) == []  # the decision bar itself: its open is already history
    assert step(broker, ohlc(T0 + HOUR, 99.0, symbol="MSFT")) == []  # another symbol's bar
    assert status(broker, order.client_order_id) is OrderStatus.NEW
    assert account(broker) == Account(D(100_000), {})

    fills = step(broker, ohlc(T0 + HOUR, 100.25, symbol="MSFT"), ohlc(T0 + HOUR, 100.25))
    assert len(fills) == 1
    assert fills[0].ts == T0 + HOUR
    assert status(broker, order.client_order_id) is OrderStatus.FILLED


def test_buy_fills_at_next_open_plus_slippage_with_commission() -> None:
    broker = SimBroker(CONFIG)
    order = intent(Side.BUY, "10")
    submit(broker, order)
    (f,) = step(broker, ohlc(T0 + HOUR, 100.25))
    # 100.25 * (1 + 5/10000) = 100.300125; commission 10 * 100.300125 * 10/10000
    assert f == Fill(
        broker_fill_id="simfill-" + order.client_order_id,
        client_order_id=order.client_order_id,
        symbol="AAPL",
        side=Side.BUY,
        qty=D(10),
        price=D("100.30012500"),
        commission=D("1.00300125"),
        ts=T0 + HOUR,
    )
    assert account(broker) == Account(D("98995.99574875"), {"AAPL": D(10)})
    filled = asyncio.run(broker.order_by_client_id(order.client_order_id))
    assert filled == BrokerOrder(
        order.client_order_id,
        "sim-" + order.client_order_id,
        OrderStatus.FILLED,
        filled_qty=D(10),
        avg_fill_price=D("100.30012500"),
    )


def test_sell_fills_at_next_open_minus_slippage() -> None:
    broker = SimBroker(CONFIG)
    submit(broker, intent(Side.SELL, "4"))
    (f,) = step(broker, ohlc(T0 + HOUR, 101.37))
    assert (f.side, f.price, f.commission) == (Side.SELL, D("101.31931500"), D("0.40527726"))
    # A short sale: cash grows by the proceeds less commission.
    assert account(broker) == Account(D(100_000) + D("405.27726") - D("0.40527726"), {"AAPL": D(-4)})


def test_fill_price_and_commission_are_quantized_with_money() -> None:
    broker = SimBroker(CONFIG)
    submit(broker, intent(Side.BUY, "7"))
    (f,) = step(broker, ohlc(T0 + HOUR, 123.456789))
    # 123.456789 * 1.0005 = 123.5185173945 -> 8 places; 7 * 123.51851739 * 0.001 = 0.86462962173 -> 8 places
    assert f.price == D("123.51851739")
    assert f.commission == D("0.86462962")
    assert f.price.as_tuple().exponent == -8
    assert f.commission.as_tuple().exponent == -8
    assert broker.fill_price(Side.SELL, 123.456789) == D("123.39506061")  # 123.3950606055 rounded
    assert broker.commission(D(3), D("0.33333333")) == D("0.00100000")


def test_zero_costs_fill_exactly_at_the_open() -> None:
    broker = SimBroker(SimBrokerConfig(starting_cash=D(1000), commission_bps=D(0), slippage_bps=D(0)))
    submit(broker, intent(Side.BUY, "3"))
    (f,) = step(broker, ohlc(T0 + HOUR, 0.1))
    assert (f.price, f.commission) == (D("0.1"), D(0))
    assert account(broker).cash == D("999.7")


def test_submit_is_idempotent_by_client_order_id() -> None:
    broker = SimBroker(CONFIG)
    order = intent(Side.BUY, "10")
    first = submit(broker, order)
    # Same id again, even with different contents (a retry after a timeout): still one order.
    second = submit(broker, intent(Side.BUY, "99", cid=order.client_order_id))
    assert first == second
    fills = step(broker, ohlc(T0 + HOUR, 100.0))
    assert [f.qty for f in fills] == [D(10)]
    # After the fill a retry returns the filled order and never trades again.
    third = submit(broker, order)
    assert third.status is OrderStatus.FILLED
    assert step(broker, ohlc(T0 + 2 * HOUR, 100.0)) == []
    assert len(all_fills(broker)) == 1
    assert account(broker).positions == {"AAPL": D(10)}


@pytest.mark.parametrize("qty", ["0", "-1", "-0.5"])
def test_non_positive_qty_is_rejected_and_never_fills(qty: str) -> None:
    broker = SimBroker(CONFIG)
    order = intent(Side.BUY, qty)
    rejected = submit(broker, order)
    assert rejected == BrokerOrder(
        order.client_order_id, None, OrderStatus.REJECTED, reason="qty must be > 0"
    )
    assert step(broker, ohlc(T0 + HOUR, 100.0)) == []
    assert status(broker, order.client_order_id) is OrderStatus.REJECTED
    assert submit(broker, order) == rejected  # idempotent for rejections too
    assert account(broker) == Account(D(100_000), {})


def test_cancel_before_fill_prevents_the_fill() -> None:
    broker = SimBroker(CONFIG)
    order = intent(Side.BUY, "10")
    submit(broker, order)
    cancelled = asyncio.run(broker.cancel(order.client_order_id))
    assert cancelled == BrokerOrder(
        order.client_order_id, "sim-" + order.client_order_id, OrderStatus.CANCELED
    )
    assert step(broker, ohlc(T0 + HOUR, 100.0)) == []
    assert status(broker, order.client_order_id) is OrderStatus.CANCELED
    assert submit(broker, order).status is OrderStatus.CANCELED  # a retry does not revive it
    assert step(broker, ohlc(T0 + 2 * HOUR, 100.0)) == []
    assert account(broker) == Account(D(100_000), {})


def test_cancel_after_fill_and_of_unknown_order() -> None:
    broker = SimBroker(CONFIG)
    order = intent(Side.BUY, "10")
    submit(broker, order)
    step(broker, ohlc(T0 + HOUR, 100.0))
    assert asyncio.run(broker.cancel(order.client_order_id)).status is OrderStatus.FILLED
    unknown = asyncio.run(broker.cancel("pb-nope"))
    assert unknown == BrokerOrder("pb-nope", None, OrderStatus.REJECTED, reason="unknown order")
    assert asyncio.run(broker.order_by_client_id("pb-nope")) is None


def test_fills_since_is_inclusive() -> None:
    broker = SimBroker(CONFIG)
    submit(broker, intent(Side.BUY, "1", bar_ts=T0))
    step(broker, ohlc(T0 + HOUR, 100.0))
    submit(broker, intent(Side.BUY, "2", bar_ts=T0 + HOUR))
    step(broker, ohlc(T0 + 2 * HOUR, 100.0))
    assert [f.qty for f in asyncio.run(broker.fills_since(T0 + HOUR))] == [D(1), D(2)]
    assert [f.qty for f in asyncio.run(broker.fills_since(T0 + 2 * HOUR))] == [D(2)]
    assert asyncio.run(broker.fills_since(T0 + 3 * HOUR)) == []


def _session(broker: SimBroker) -> tuple[list[Fill], OpenOrder, OpenOrder]:
    """Two fills, then one order still open and one never sent: where a restart finds the journal."""
    submit(broker, intent(Side.BUY, "10", bar_ts=T0))
    submit(broker, intent(Side.SELL, "5", bar_ts=T0, symbol="MSFT"))
    step(broker, ohlc(T0 + HOUR, 100.25), ohlc(T0 + HOUR, 50.5, symbol="MSFT"))
    still_open = intent(Side.SELL, "4", bar_ts=T0 + HOUR)
    accepted = submit(broker, still_open)
    unsent = intent(Side.BUY, "1", bar_ts=T0 + HOUR, symbol="MSFT")
    return (
        all_fills(broker),
        OpenOrder(still_open, OrderStatus.NEW, D(0), accepted.broker_order_id),
        OpenOrder(unsent, OrderStatus.NEW),
    )


def test_restore_rebuilds_the_account_and_fills_the_open_order_next_bar() -> None:
    original = SimBroker(CONFIG)
    fills, still_open, unsent = _session(original)
    open_order = still_open.intent
    assert len(fills) == 2

    restored = SimBroker(CONFIG)
    restored.restore(fills, [still_open, unsent])
    assert account(restored) == account(original)
    assert account(restored).positions == {"AAPL": D(10), "MSFT": D(-5)}
    assert all_fills(restored) == fills
    assert status(restored, open_order.client_order_id) is OrderStatus.NEW
    # The journal's order that never got a broker id never arrived here: reconciliation sends it.
    assert status(restored, unsent.intent.client_order_id) is None
    assert [o.client_order_id for o in asyncio.run(restored.open_orders())] == [open_order.client_order_id]
    assert submit(restored, open_order).status is OrderStatus.NEW  # a replay does not double it

    next_bars: Sequence[Bar] = (ohlc(T0 + 2 * HOUR, 101.37), ohlc(T0 + 2 * HOUR, 51.0, symbol="MSFT"))
    expected = step(original, *next_bars)
    got = step(restored, *next_bars)
    assert got == expected
    assert [(f.side, f.qty, f.price, f.commission) for f in got] == [
        (Side.SELL, D(4), D("101.31931500"), D("0.40527726"))
    ]
    assert account(restored) == account(original)
    assert account(restored).positions == {"AAPL": D(6), "MSFT": D(-5)}
    assert status(restored, open_order.client_order_id) is OrderStatus.FILLED


def test_client_order_id_is_deterministic_and_short() -> None:
    cid = client_order_id("paper", "lstm", "AAPL", T0)
    assert cid == client_order_id("paper", "lstm", "AAPL", T0, 0)
    # One instant is one id, whatever zone it is written in.
    assert cid == client_order_id("paper", "lstm", "AAPL", T0.astimezone(timezone(timedelta(hours=-5))))
    # Pinned: ids are stored in the journal, so a restart on a new version must produce the same one.
    assert cid == "pb-e5ed2ff6a800e737d0133da2be7d5"
    assert len(cid) == 32
    assert cid.startswith("pb-")
    assert all(c in "0123456789abcdef" for c in cid[3:])


def test_client_order_id_differs_by_every_input() -> None:
    base = ("paper", "lstm", "AAPL", T0, 0)
    variants = [
        base,
        ("backtest-1", "lstm", "AAPL", T0, 0),
        ("paper", "lstm2", "AAPL", T0, 0),
        ("paper", "lstm", "MSFT", T0, 0),
        ("paper", "lstm", "AAPL", T0 + HOUR, 0),
        ("paper", "lstm", "AAPL", T0 + timedelta(microseconds=1), 0),
        ("paper", "lstm", "AAPL", T0, 1),
        ("paper", "lstm", "AAPL", T0, 2),
    ]
    ids = [client_order_id(*v) for v in variants]
    assert len(set(ids)) == len(ids)
    assert all(len(i) <= 36 for i in ids)
    long_names = client_order_id(
        "b" * 64, "x" * 48, "Y" * 32, T0.astimezone(timezone(timedelta(hours=14))), 10**9
    )
    assert len(long_names) == 32


# --------------------------------------------------------------------------------------------- splits


def test_a_split_scales_the_position_and_entry_and_replays_in_time_order() -> None:
    ledger = Ledger(D(10_000))
    ledger.apply(fill(Side.BUY, "10", "400", "1", n=0))
    split = Split("AAPL", T0 + 2 * HOUR, Fraction(4))
    ledger.split(split)
    assert ledger.position("AAPL") == Position("AAPL", D(40), D(100))
    assert ledger.cash == D(10_000) - D(4001)  # a split moves no cash
    ledger.apply(fill(Side.SELL, "40", "101", "1", n=2))  # at the split bar: already the new scale
    assert ledger.qty("AAPL") == 0
    # Rebuilt from the history, the split goes before the fill of its own bar, whatever the list order.
    rebuilt = Ledger.from_fills(
        D(10_000), [fill(Side.BUY, "10", "400", "1", n=0), fill(Side.SELL, "40", "101", "1", n=2)], [split]
    )
    assert rebuilt.cash == ledger.cash and rebuilt.qty("AAPL") == 0
    # A reverse split keeps the fraction of a share to 1e-8.
    odd = Ledger(D(10_000))
    odd.apply(fill(Side.BUY, "10", "5", "0", n=0))
    odd.split(Split("AAPL", T0 + HOUR, Fraction(1, 3)))
    assert odd.qty("AAPL") == D("3.33333333")


def test_the_simulator_scales_an_open_order_by_a_split_and_fills_it_at_the_new_scale() -> None:
    broker = SimBroker(SimBrokerConfig(slippage_bps=D(0), commission_bps=D(0)))
    submit(broker, intent(Side.BUY, "10"))
    broker.apply_split(Split("AAPL", T0 + HOUR, Fraction(4)))
    split_bar = Bar("AAPL", T0 + HOUR, 100.0, 101.0, 99.0, 100.0, 1e6)
    held = Bar("AAPL", T0 + 2 * HOUR, 200.0, 201.0, 199.0, 200.0, 1e6)
    (filled,) = step(broker, split_bar, held)  # two bars of one symbol: the first one that opened after
    assert (filled.qty, filled.price, filled.ts) == (D(40), D(100), T0 + HOUR)


def test_the_simulator_forgets_old_fills_and_orders_so_its_memory_stays_flat() -> None:
    """A month of hourly trading keeps only what a reconciliation may still ask about: the open order,
    and the orders and fills of the last FILL_MEMORY before the oldest of them or the latest fill."""
    broker = SimBroker(SimBrokerConfig())
    for n in range(24 * 30):
        ts = T0 + n * HOUR
        submit(broker, intent(Side.BUY if n % 2 else Side.SELL, "1", ts))
        step(broker, Bar("AAPL", ts + HOUR, 100.0, 101.0, 99.0, 100.0, 1e6))
    submit(broker, intent(Side.BUY, "1", T0 + 720 * HOUR))  # still open
    assert len(broker._fills) <= 3 and len(broker._orders) <= 4
    latest = T0 + 720 * HOUR
    assert [f.ts for f in asyncio.run(broker.fills_since(latest))] == [latest]
    assert asyncio.run(broker.positions()) == {}  # the books themselves are whole: 360 buys, 360 sells
    assert len(asyncio.run(broker.open_orders())) == 1
