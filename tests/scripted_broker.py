"""The simulated broker with a venue's habits, scripted by a test: fills in parts, an event stream that
goes quiet, a submit whose answer is lost, an order lost on the way, a position changed behind paperbot's
back. It keeps the Broker contract exactly, so the engine cannot tell it from a venue adapter."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import ROUND_DOWN, Decimal

from bot.bars import Bar
from bot.brokers import BrokerStatus
from bot.brokers.sim import SimBroker, SimBrokerConfig
from bot.errors import BrokerError
from bot.orders import BrokerOrder, Fill, OrderIntent, Side


class ScriptedBroker(SimBroker):
    """Fills each order in `partials` (fractions of its quantity) at the opens of its next bars."""

    def __init__(self, config: SimBrokerConfig, partials: Sequence[str] = ("1",)) -> None:
        super().__init__(config)
        self.partials = [Decimal(p) for p in partials]
        self.silent = False  # fills happen, but no event tells of them (the order stream is down)
        self.lose_next_answer = False  # the next order arrives, but its answer is lost (a 504)
        self.lose_next_order = False  # the next order is lost on the way (a timeout before it arrived)
        self.submits: list[str] = []  # every client order id that reached submit(), in order
        self.lost: list[tuple[str, str]] = []  # (what was lost: "answer" or "order", client order id)
        self.executed: list[Fill] = []  # every fill of our orders (the simulator forgets old ones)
        self._parts: dict[str, int] = {}
        self._last: dict[str, Bar] = {}
        self._foreign = 0

    async def submit(self, intent: OrderIntent) -> BrokerOrder:
        """As the simulator, unless told to lose the order or its answer."""
        self.submits.append(intent.client_order_id)
        if self.lose_next_order:
            self.lose_next_order = False
            self.lost.append(("order", intent.client_order_id))
            raise BrokerError("timed out before the order arrived")
        order = await super().submit(intent)
        if self.lose_next_answer:
            self.lose_next_answer = False
            self.lost.append(("answer", intent.client_order_id))
            raise BrokerError("504 Gateway Time-out (the order did arrive)")
        return order

    def go_quiet(self, quiet: bool, ts: datetime) -> None:
        """The order stream goes down (fills keep happening unseen) or comes back."""
        self.silent = quiet
        self.events.put(BrokerStatus(not quiet, ts, "scripted"))

    def shift_position(self, symbol: str, qty: Decimal) -> Fill:
        """Someone moves `qty` of `symbol` into (or out of) this account, without paying for it."""
        bar = self._last[symbol]
        self._foreign += 1
        fill = Fill(
            f"manual-{self._foreign}",
            f"manual-{self._foreign}",
            symbol,
            Side.BUY if qty > 0 else Side.SELL,
            abs(qty),
            Decimal(0),
            Decimal(0),
            bar.ts,
        )
        self._ledger.apply(fill)
        self._remember(fill)
        return fill

    def observe_bars(self, bars: Sequence[Bar]) -> None:
        """Fill the next part of every order placed before these bars opened."""
        self._last.update({bar.symbol: bar for bar in bars})
        for order, bar in self._due(bars):
            cid = order.intent.client_order_id
            part = self._parts.get(cid, 0)
            self._parts[cid] = part + 1
            share = (order.intent.qty * self.partials[part]).quantize(order.intent.qty, ROUND_DOWN)
            qty = order.remaining if part >= len(self.partials) - 1 else share
            if qty > 0:
                update = self._execute(order, bar, qty, f"simfill-{cid}-{part}")
                assert update.fill is not None
                self.executed.append(update.fill)
                if not self.silent:
                    self.events.put(update)
