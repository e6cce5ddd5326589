"""Reconciliation: what the broker says against what the ledger holds, at start, after the broker's order
stream comes back, and periodically.

One pass settles the journal's open orders by client order id (never-received ones are reported, the
engine decides whether to send or expire them), fetches the executions since the last known fill (each
recorded once, by its broker fill id, whichever path reported it), and compares positions and cash with
the broker's account. A difference beyond tolerance must survive a second look `settle_seconds` later
(a fill may be in flight between the two queries) before it is reported."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from bot.brokers import Broker
from bot.config import ReconciliationSettings
from bot.orders import Fill, OpenOrder, OrderUpdate


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A position (or, with symbol None, the cash) on which the ledger and the broker disagree."""

    symbol: str | None
    ledger: Decimal
    broker: Decimal

    def describe(self) -> str:
        """One line for the alert."""
        what = "cash" if self.symbol is None else f"position {self.symbol}"
        return f"{what}: ledger {self.ledger.normalize():f}, broker {self.broker.normalize():f}"


@dataclass(frozen=True, slots=True)
class BookView:
    """What the engine holds when a pass starts."""

    cash: Decimal
    positions: Mapping[str, Decimal]
    open_orders: Sequence[OpenOrder]
    fill_ids: Collection[str]
    since: datetime | None  # executions from here on are fetched; None: there is nothing to look for


@dataclass
class Reconciliation:
    """What one pass found: order states and new fills to record, orders the broker never received, open
    orders and fills that are not ours, and the differences that remained."""

    updates: list[OrderUpdate] = field(default_factory=list)
    missing: list[OpenOrder] = field(default_factory=list)
    foreign: list[OrderUpdate] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)


class Reconciler:
    """Runs passes against one broker for the symbols the book trades."""

    def __init__(
        self,
        broker: Broker,
        settings: ReconciliationSettings,
        symbols: Collection[str],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._broker = broker
        self._settings = settings
        self._symbols = set(symbols)
        self._sleep = sleep

    async def run(
        self, view: BookView, ours: Callable[[set[str]], Awaitable[set[str]]], now: datetime
    ) -> Reconciliation:
        """One pass. `ours` says which client order ids the journal holds."""
        result = Reconciliation()
        statuses: list[OrderUpdate] = []
        for order in view.open_orders:
            known = await self._broker.order_by_client_id(order.intent.client_order_id)
            if known is None:
                result.missing.append(order)
            else:
                statuses.append(OrderUpdate(known, now))
        theirs = {o.client_order_id: o for o in await self._broker.open_orders()}
        mine = await ours(set(theirs))
        result.foreign.extend(OrderUpdate(o, now) for cid, o in theirs.items() if cid not in mine)
        seen = set(view.fill_ids)
        cash, positions = view.cash, dict(view.positions)
        for attempt in range(2):
            account = await self._broker.account()  # before the fills: a fill in between shows as a gap
            for fill in await self._new_fills(view.since, seen):
                seen.add(fill.broker_fill_id)
                if fill.client_order_id in await ours({fill.client_order_id}):
                    result.updates.append(OrderUpdate(None, fill.ts, fill))
                    cash += fill.cash_delta
                    positions[fill.symbol] = positions.get(fill.symbol, Decimal(0)) + fill.signed_qty
                else:
                    result.foreign.append(OrderUpdate(None, fill.ts, fill))
            result.mismatches = self._compare(cash, positions, account.cash, account.positions)
            if not result.mismatches or attempt or self._settings.settle_seconds == 0:
                break
            await self._sleep(self._settings.settle_seconds)
        result.updates.extend(statuses)  # after the fills, so that a FILLED status finds them recorded
        return result

    async def _new_fills(self, since: datetime | None, seen: Collection[str]) -> list[Fill]:
        if since is None:
            return []
        return [f for f in await self._broker.fills_since(since) if f.broker_fill_id not in seen]

    def _compare(
        self,
        cash: Decimal,
        positions: Mapping[str, Decimal],
        broker_cash: Decimal,
        broker_positions: Mapping[str, Decimal],
    ) -> list[Mismatch]:
        # Positions in symbols the book neither trades nor holds are the account's own business.
        mismatches = []
        for symbol in sorted(self._symbols | {s for s, q in positions.items() if q}):
            ours, theirs = positions.get(symbol, Decimal(0)), broker_positions.get(symbol, Decimal(0))
            if abs(ours - theirs) > self._settings.qty_tolerance:
                mismatches.append(Mismatch(symbol, ours, theirs))
        if abs(cash - broker_cash) > self._settings.cash_tolerance:
            mismatches.append(Mismatch(None, cash, broker_cash))
        return mismatches
