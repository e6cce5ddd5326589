"""The broker contract, its events, and the config section every `[broker] kind` extends.

A timeout or a 5xx is not a rejection: the order stays UNKNOWN until reconciliation (`order_by_client_id`)
settles it, and an intent is never submitted twice."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from bot.bars import Bar
from bot.ledger import Split
from bot.orders import BrokerOrder, Fill, OpenOrder, OrderIntent, OrderUpdate
from bot.settings import Section, SymbolRules


@dataclass(frozen=True, slots=True)
class Account:
    """Cash and positions as the broker reports them."""

    cash: Decimal
    positions: dict[str, Decimal]


@dataclass(frozen=True, slots=True)
class BrokerStatus:
    """The broker's order-update stream went down or came back. The engine reconciles after a comeback,
    since a stream does not replay what happened while it was down."""

    connected: bool
    ts: datetime
    detail: str = ""


BrokerEvent = OrderUpdate | BrokerStatus


class BrokerEvents:
    """A broker's async stream of events. The engine takes what is already in with `drain()` (the simulated
    broker fills while the engine hands it a batch's bars) and waits for more with `wait()`."""

    def __init__(self) -> None:
        self._items: deque[BrokerEvent] = deque()
        self._ready = asyncio.Event()

    def put(self, event: BrokerEvent) -> None:
        """Queue an event (on the event loop's thread)."""
        self._items.append(event)
        self._ready.set()

    def drain(self) -> list[BrokerEvent]:
        """Every event queued so far, oldest first."""
        items = list(self._items)
        self._items.clear()
        self._ready.clear()
        return items

    async def wait(self) -> None:
        """Until an event is queued."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()

    def __aiter__(self) -> BrokerEvents:
        return self

    async def __anext__(self) -> BrokerEvent:
        await self.wait()
        event = self._items.popleft()
        if not self._items:
            self._ready.clear()
        return event


@dataclass(frozen=True, slots=True)
class BrokerContext:
    """What a broker is built for: the symbols it will trade, and whether it serves a backtest."""

    symbols: Sequence[str]
    backtest: bool = False


class Broker(Protocol):
    """What the engine needs from any broker, simulated or remote."""

    @property
    def events(self) -> BrokerEvents:
        """Order updates and fills, and the order stream's comings and goings."""
        ...

    async def start(self) -> None:
        """Connect and load what the venue publishes (market rules); raises OperationalError when it cannot
        trade at all (bad keys, a live-money account)."""
        ...

    def restore(
        self, fills: Sequence[Fill], open_orders: Sequence[OpenOrder], splits: Sequence[Split] = ()
    ) -> None:
        """What the journal recorded before a restart (a venue keeps its own records and ignores it)."""
        ...

    def apply_split(self, split: Split) -> None:
        """A split seen in the prices: a simulator scales its position and open orders by it; a venue
        does that itself and ignores it."""
        ...

    async def submit(self, intent: OrderIntent) -> BrokerOrder:
        """Send a market order. Raises BrokerError when the outcome is unknown, BrokerUnavailableError when
        nothing was sent; a rejection is an order with status REJECTED."""
        ...

    async def cancel(self, client_order_id: str) -> BrokerOrder:
        """Cancel an open order."""
        ...

    async def order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        """The broker's record of an order, or None if it never arrived."""
        ...

    async def open_orders(self) -> list[BrokerOrder]:
        """Every order still able to fill."""
        ...

    async def fills_since(self, ts: datetime) -> list[Fill]:
        """Executions at or after `ts`, oldest first."""
        ...

    async def positions(self) -> dict[str, Decimal]:
        """Signed quantity by symbol."""
        ...

    async def account(self) -> Account:
        """Cash and positions."""
        ...

    def market_rules(self, symbol: str) -> SymbolRules | None:
        """The venue's lot size, minimums and precision for `symbol`, or None where it publishes none."""
        ...

    def observe_bars(self, bars: Sequence[Bar]) -> None:
        """Market data, for a broker that simulates a market (it fills on it); a venue ignores it."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class BrokerSettings(Section):
    """The part of `[broker]` every kind shares: each kind's section extends it and is one member of the
    discriminated union in `bot.brokers.registry`."""

    kind: str

    def build(self, context: BrokerContext) -> Broker:
        """The broker this section describes; keys and endpoints are checked here, not when the config is
        read, so that `paperbot status` never needs them."""
        raise NotImplementedError

    def initial_cash(self) -> Decimal | None:
        """The cash a new book starts with when the config sets it (a simulator); None: the venue's."""
        return None
