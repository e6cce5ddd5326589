"""One reconciliation pass against a broker whose records are set by the test: order states by client
id, missed fills recorded once, foreign orders and fills reported, and a difference judged only after a
second look (a fill can land between the account query and the fills query)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from bot.brokers import Account
from bot.config import ReconciliationSettings
from bot.orders import BrokerOrder, Fill, OpenOrder, OrderIntent, OrderStatus, Side
from bot.reconcile import BookView, Reconciler, Reconciliation

T0 = datetime(2024, 1, 2, 15, tzinfo=UTC)
D = Decimal


class Venue:
    """What a broker says when asked: its orders, its fills, and one account answer per question."""

    def __init__(self, orders: dict[str, BrokerOrder], fills: list[Fill], accounts: list[Account]) -> None:
        self.orders, self.fills, self.accounts = orders, fills, accounts

    async def order_by_client_id(self, cid: str) -> BrokerOrder | None:
        return self.orders.get(cid)

    async def open_orders(self) -> list[BrokerOrder]:
        return [o for o in self.orders.values() if o.status.is_open]

    async def account(self) -> Account:
        return self.accounts.pop(0) if len(self.accounts) > 1 else self.accounts[0]

    async def fills_since(self, ts: datetime) -> list[Fill]:
        return [f for f in self.fills if f.ts >= ts]


def fill(fid: str, cid: str, qty: str, price: str = "100", symbol: str = "AAPL") -> Fill:
    return Fill(fid, cid, symbol, Side.BUY, D(qty), D(price), D(0), T0 + timedelta(minutes=1))


def pending(cid: str, qty: str = "10") -> OpenOrder:
    return OpenOrder(OrderIntent(cid, "s", "AAPL", Side.BUY, D(qty), T0), OrderStatus.NEW, D(0), "b-" + cid)


def run(venue: Venue, view: BookView, settle: float = 2.0) -> tuple[Reconciliation, list[float]]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    settings = ReconciliationSettings(settle_seconds=settle)
    reconciler = Reconciler(venue, settings, ["AAPL"], sleep=sleep)  # type: ignore[arg-type]
    ours = {"c1", "c2"}

    async def journaled(cids: set[str]) -> set[str]:
        return cids & ours

    result = asyncio.run(reconciler.run(view, journaled, T0 + timedelta(minutes=5)))
    return result, slept


def test_a_fill_in_flight_is_no_mismatch_and_is_recorded_once() -> None:
    done = fill("f1", "c1", "10")
    venue = Venue(
        {
            "c1": BrokerOrder("c1", "b-c1", OrderStatus.FILLED, D(10), D(100)),
            "c2": BrokerOrder("c2", "b-c2", OrderStatus.NEW),
        },
        [done],
        # The first answer predates the fill; the second, a settle later, has it.
        [Account(D(10_000), {}), Account(D(9_000), {"AAPL": D(10)})],
    )
    view = BookView(D(10_000), {}, [pending("c1"), pending("c2"), pending("c3")], set(), T0)
    result, slept = run(venue, view)
    assert result.mismatches == []
    assert slept == [2.0]
    updates = result.updates
    assert [u.fill for u in updates if u.fill is not None] == [done]
    assert [u.order.status for u in updates if u.order is not None] == [OrderStatus.FILLED, OrderStatus.NEW]
    assert [o.intent.client_order_id for o in result.missing] == ["c3"]


def test_a_real_difference_is_reported_after_a_second_look() -> None:
    venue = Venue({}, [fill("x1", "manual", "5")], [Account(D(9_500), {"AAPL": D(5)})])
    view = BookView(D(10_000), {}, [], {"f0"}, T0)
    result, slept = run(venue, view)
    assert slept == [2.0]
    assert [m.describe() for m in result.mismatches] == [
        "position AAPL: ledger 0, broker 5",
        "cash: ledger 10000, broker 9500",
    ]
    assert [u.client_order_id for u in result.foreign] == ["manual"]
    assert result.updates == []


def test_known_fills_and_equal_books_need_no_second_look() -> None:
    known = fill("f1", "c1", "10")
    venue = Venue({}, [known], [Account(D(9_000), {"AAPL": D(10)})])
    view = BookView(D(9_000), {"AAPL": D(10)}, [], {"f1"}, T0)
    result, slept = run(venue, view)
    assert (result.updates, result.mismatches, slept) == ([], [], [])
