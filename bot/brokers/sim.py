"""The simulated broker: a market order fills at the NEXT bar's open of its symbol, plus slippage and
commission, so a decision made at a bar's close never trades at a price it already saw."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import Field

from bot.bars import Bar
from bot.brokers.base import Account, BrokerContext, BrokerEvents, BrokerSettings
from bot.ledger import Ledger, Split
from bot.orders import (
    FILL_MEMORY,
    BrokerOrder,
    Fill,
    OpenOrder,
    OrderIntent,
    OrderStatus,
    OrderUpdate,
    RecentFills,
    Side,
    money,
    to_decimal,
)
from bot.settings import SymbolRules

_BPS = Decimal(10_000)
Bps = Annotated[Decimal, Field(ge=0, le=1000)]


class SimBrokerConfig(BrokerSettings):
    """[broker] kind = "sim": fills market orders at the next bar's open plus slippage and commission."""

    kind: Literal["sim"] = "sim"
    starting_cash: Annotated[Decimal, Field(gt=0, le=Decimal("1e12"))] = Decimal(100_000)
    commission_bps: Bps = Decimal(1)
    slippage_bps: Bps = Decimal(2)

    def build(self, context: BrokerContext) -> SimBroker:
        """A simulator with this section's costs."""
        return SimBroker(self)

    def initial_cash(self) -> Decimal | None:
        """The configured starting cash."""
        return self.starting_cash


class SimBroker:
    """In-process broker. Its state is rebuilt from the journal on start (`restore`), so a restart fills
    the same orders at the same prices as a run that never stopped. Fills are events, as at a venue."""

    def __init__(self, config: SimBrokerConfig) -> None:
        self._config = config
        self._ledger = Ledger(config.starting_cash)
        self._open: dict[str, OpenOrder] = {}
        self._orders: dict[str, BrokerOrder] = {}  # by client order id: open ones, and recent others
        self._bar_ts: dict[str, datetime] = {}  # each order's decision bar, to forget old orders by
        self._fills = RecentFills()
        self._last_fill: datetime | None = None
        self._events = BrokerEvents()

    @property
    def events(self) -> BrokerEvents:
        """Fills, as they happen in `observe_bars`."""
        return self._events

    async def start(self) -> None:
        """Nothing to connect."""

    def restore(
        self, fills: Sequence[Fill], open_orders: Sequence[OpenOrder], splits: Sequence[Split] = ()
    ) -> None:
        """Load the executions, splits and the orders this simulator had accepted before a restart."""
        self._ledger = Ledger.from_fills(self._config.starting_cash, fills, splits)
        for fill in fills:
            self._remember(fill)
        for order in open_orders:
            if order.broker_order_id is None:  # never acknowledged: it did not arrive here
                continue
            cid = order.intent.client_order_id
            self._open[cid] = order
            self._orders[cid] = self._accepted(order.intent)
            self._bar_ts[cid] = order.intent.bar_ts
        self._forget()

    @staticmethod
    def _accepted(intent: OrderIntent) -> BrokerOrder:
        return BrokerOrder(intent.client_order_id, "sim-" + intent.client_order_id, OrderStatus.NEW)

    async def submit(self, intent: OrderIntent) -> BrokerOrder:
        """Accept a market order for the next bar, or reject it if it is malformed or a repeat."""
        known = self._orders.get(intent.client_order_id)
        if known is not None:  # idempotent: the same intent never becomes a second order
            return known
        if intent.qty <= 0:
            order = BrokerOrder(intent.client_order_id, None, OrderStatus.REJECTED, reason="qty must be > 0")
        else:
            order = self._accepted(intent)
            self._open[intent.client_order_id] = OpenOrder(
                intent, OrderStatus.NEW, Decimal(0), order.broker_order_id
            )
        self._orders[intent.client_order_id] = order
        self._bar_ts[intent.client_order_id] = intent.bar_ts
        return order

    async def cancel(self, client_order_id: str) -> BrokerOrder:
        """Cancel an order that has not filled yet."""
        order = self._orders.get(client_order_id)
        if order is None:
            return BrokerOrder(client_order_id, None, OrderStatus.REJECTED, reason="unknown order")
        if self._open.pop(client_order_id, None) is not None:
            order = BrokerOrder(client_order_id, order.broker_order_id, OrderStatus.CANCELED)
            self._orders[client_order_id] = order
        return order

    async def order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        """The order as this venue knows it."""
        return self._orders.get(client_order_id)

    async def open_orders(self) -> list[BrokerOrder]:
        """Orders waiting for their next bar."""
        return [self._orders[cid] for cid in self._open]

    async def positions(self) -> dict[str, Decimal]:
        """Signed quantities of open positions."""
        return {s: p.qty for s, p in self._ledger.positions().items()}

    async def account(self) -> Account:
        """Cash and positions."""
        return Account(self._ledger.cash, await self.positions())

    async def fills_since(self, ts: datetime) -> list[Fill]:
        """Executions at or after `ts`."""
        return self._fills.since(ts)

    def fill_price(self, side: Side, bar_open: float) -> Decimal:
        """The open, moved against the order by the slippage."""
        slip = self._config.slippage_bps / _BPS
        return money(to_decimal(bar_open) * (1 + side.sign * slip))

    def commission(self, qty: Decimal, price: Decimal) -> Decimal:
        """Commission on the notional of a fill."""
        return money(qty * price * self._config.commission_bps / _BPS)

    def observe_bars(self, bars: Sequence[Bar]) -> None:
        """Fill every open order of these symbols that was placed before the bar opened, as events."""
        for order, bar in self._due(bars):
            cid = order.intent.client_order_id
            self._events.put(self._execute(order, bar, order.remaining, "simfill-" + cid))
        self._forget()

    def _remember(self, fill: Fill) -> None:
        self._fills.add(fill)
        self._last_fill = fill.ts if self._last_fill is None else max(self._last_fill, fill.ts)

    def _forget(self) -> None:
        """Keep only what a reconciliation may still ask about (see FILL_MEMORY): the open orders, and the
        other orders and fills since shortly before the oldest of them or the latest fill."""
        marks = [self._bar_ts[cid] for cid in self._open]
        if self._last_fill is not None:
            marks.append(self._last_fill)
        if not marks:
            return
        horizon = min(marks) - FILL_MEMORY
        self._fills.forget_before(horizon)
        for cid in [c for c, ts in self._bar_ts.items() if ts < horizon and c not in self._open]:
            del self._orders[cid], self._bar_ts[cid]

    def apply_split(self, split: Split) -> None:
        """Scale the position and the open orders of the split's symbol, as a venue does."""
        self._ledger.split(split)
        for cid, order in self._open.items():
            if order.intent.symbol == split.symbol:
                self._open[cid] = order.split(split.ratio)

    def _due(self, bars: Sequence[Bar]) -> list[tuple[OpenOrder, Bar]]:
        """The open orders these bars can fill: the first bar of their symbol that opened after their
        decision (bars come in time order; a symbol may have two when a held bar was confirmed)."""
        due = []
        for order in list(self._open.values()):
            intent = order.intent
            bar = next((b for b in bars if b.symbol == intent.symbol and b.ts > intent.bar_ts), None)
            if bar is not None:
                due.append((order, bar))
        return due

    def _execute(self, order: OpenOrder, bar: Bar, qty: Decimal, fill_id: str) -> OrderUpdate:
        """Fill `qty` of `order` at `bar`'s open, moved by the slippage: the books, and the event."""
        intent = order.intent
        cid = intent.client_order_id
        price = self.fill_price(intent.side, bar.open)
        fill = Fill(fill_id, cid, intent.symbol, intent.side, qty, price, self.commission(qty, price), bar.ts)
        filled = order.filled_qty + qty
        status = OrderStatus.FILLED if filled >= intent.qty else OrderStatus.PARTIALLY_FILLED
        if status is OrderStatus.FILLED:
            del self._open[cid]
        else:
            self._open[cid] = replace(order, filled_qty=filled, status=status)
        state = BrokerOrder(cid, "sim-" + cid, status, filled_qty=filled, avg_fill_price=price)
        self._orders[cid] = state
        self._ledger.apply(fill)
        self._remember(fill)
        return OrderUpdate(state, bar.ts, fill)

    def market_rules(self, symbol: str) -> SymbolRules | None:
        """The simulator has no venue rules: the config's apply."""
        return None

    async def close(self) -> None:
        """Nothing to release."""
