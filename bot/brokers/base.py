"""The broker contract. A timeout or a 5xx is not a rejection: the order stays UNKNOWN until
reconciliation (`order_by_client_id`) settles it, and an intent is never submitted twice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from bot.bars import Bar
from bot.config import SymbolRules
from bot.orders import BrokerOrder, Fill, OrderIntent


@dataclass(frozen=True, slots=True)
class Account:
    """Cash and positions as the broker reports them."""

    cash: Decimal
    positions: dict[str, Decimal]


class Broker(Protocol):
    """What the engine needs from any broker, simulated or remote."""

    async def submit(self, intent: OrderIntent) -> BrokerOrder:
        """Send a market order; raises BrokerError when the outcome is unknown."""
        ...

    async def cancel(self, client_order_id: str) -> BrokerOrder:
        """Cancel an open order."""
        ...

    async def order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        """The broker's record of an order, or None if it never arrived."""
        ...

    async def positions(self) -> dict[str, Decimal]:
        """Signed quantity by symbol."""
        ...

    async def account(self) -> Account:
        """Cash and positions."""
        ...

    async def fills_since(self, ts: datetime) -> list[Fill]:
        """Executions at or after `ts`."""
        ...

    async def on_bars(self, bars: Sequence[Bar]) -> list[Fill]:
        """Market data hook: the simulated broker fills here; remote brokers return []."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...

    def market_rules(self, symbol: str) -> SymbolRules | None:
        """The venue's lot size, minimums and precision for `symbol`, or None where it publishes none."""
        ...
