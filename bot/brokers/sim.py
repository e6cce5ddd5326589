"""The simulated broker: a market order fills at the NEXT bar's open of its symbol, plus slippage and
commission, so a decision made at a bar's close never trades at a price it already saw."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal

from bot.bars import Bar
from bot.brokers.base import Account
from bot.config import SimBrokerConfig, SymbolRules
from bot.ledger import Ledger
from bot.orders import BrokerOrder, Fill, OrderIntent, OrderStatus, Side, money, to_decimal

_BPS = Decimal(10_000)


class SimBroker:
    """In-process broker. Its state is rebuilt from the journal on start (`restore`), so a restart fills
    the same orders at the same prices as a run that never stopped."""

    def __init__(self, config: SimBrokerConfig) -> None:
        self._config = config
        self._ledger = Ledger(config.starting_cash)
        self._open: dict[str, OrderIntent] = {}
        self._orders: dict[str, BrokerOrder] = {}
        self._fills: list[Fill] = []

    def restore(self, fills: Iterable[Fill], open_orders: Iterable[OrderIntent]) -> None:
        """Load the executions and still-open orders recorded before a restart."""
        for fill in fills:
            self._ledger.apply(fill)
            self._fills.append(fill)
        for intent in open_orders:
            self._open[intent.client_order_id] = intent
            self._orders[intent.client_order_id] = self._accepted(intent)

    @staticmethod
    def _accepted(intent: OrderIntent) -> BrokerOrder:
        return BrokerOrder(intent.client_order_id, "sim-" + intent.client_order_id, OrderStatus.ACCEPTED)

    async def submit(self, intent: OrderIntent) -> BrokerOrder:
        """Accept a market order for the next bar, or reject it if it is malformed or a repeat."""
        known = self._orders.get(intent.client_order_id)
        if known is not None:  # idempotent: the same intent never becomes a second order
            return known
        if intent.qty <= 0:
            order = BrokerOrder(intent.client_order_id, None, OrderStatus.REJECTED, reason="qty must be > 0")
        else:
            order = self._accepted(intent)
            self._open[intent.client_order_id] = intent
        self._orders[intent.client_order_id] = order
        return order

    async def cancel(self, client_order_id: str) -> BrokerOrder:
        """Cancel an order that has not filled yet."""
        order = self._orders.get(client_order_id)
        if order is None:
            return BrokerOrder(client_order_id, None, OrderStatus.REJECTED, reason="unknown order")
        if self._open.pop(client_order_id, None) is not None:
            order = BrokerOrder(client_order_id, order.broker_order_id, OrderStatus.CANCELLED)
            self._orders[client_order_id] = order
        return order

    async def order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        """The order as this venue knows it."""
        return self._orders.get(client_order_id)

    async def positions(self) -> dict[str, Decimal]:
        """Signed quantities of open positions."""
        return {s: p.qty for s, p in self._ledger.positions().items()}

    async def account(self) -> Account:
        """Cash and positions."""
        return Account(self._ledger.cash, await self.positions())

    async def fills_since(self, ts: datetime) -> list[Fill]:
        """Executions at or after `ts`."""
        return [f for f in self._fills if f.ts >= ts]

    def fill_price(self, side: Side, bar_open: float) -> Decimal:
        """The open, moved against the order by the slippage."""
        slip = self._config.slippage_bps / _BPS
        return money(to_decimal(bar_open) * (1 + side.sign * slip))

    def commission(self, qty: Decimal, price: Decimal) -> Decimal:
        """Commission on the notional of a fill."""
        return money(qty * price * self._config.commission_bps / _BPS)

    async def on_bars(self, bars: Sequence[Bar]) -> list[Fill]:
        """Fill every open order of these symbols that was placed before the bar opened."""
        by_symbol = {bar.symbol: bar for bar in bars}
        fills: list[Fill] = []
        for cid, intent in list(self._open.items()):
            bar = by_symbol.get(intent.symbol)
            if bar is None or bar.ts <= intent.bar_ts:
                continue
            price = self.fill_price(intent.side, bar.open)
            fill = Fill(
                broker_fill_id="simfill-" + cid,
                client_order_id=cid,
                strategy=intent.strategy,
                symbol=intent.symbol,
                side=intent.side,
                qty=intent.qty,
                price=price,
                commission=self.commission(intent.qty, price),
                ts=bar.ts,
            )
            del self._open[cid]
            self._orders[cid] = BrokerOrder(
                cid, "sim-" + cid, OrderStatus.FILLED, filled_qty=intent.qty, avg_fill_price=price
            )
            self._ledger.apply(fill)
            self._fills.append(fill)
            fills.append(fill)
        return fills

    def market_rules(self, symbol: str) -> SymbolRules | None:
        """The simulator has no venue rules: the config's apply."""
        return None

    async def close(self) -> None:
        """Nothing to release."""
