"""The values that travel from risk through the journal to the broker and back."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from fractions import Fraction

# Every amount is quantized to this many fractional digits before it is stored: the schema keeps 10,
# so PostgreSQL and SQLite always hold the same number.
MONEY_PLACES = Decimal("1e-8")


def money(value: Decimal) -> Decimal:
    """Round an amount (cash, price, commission) to the stored precision, half to even."""
    return value.quantize(MONEY_PLACES)


def split_qty(qty: Decimal, ratio: Fraction) -> Decimal:
    """A quantity after a split of `ratio` new shares per old one, at stored precision (a reverse split
    may leave a fraction of a share, which the books keep, to 1e-8, instead of paying it out in cash)."""
    return money(qty * ratio.numerator / ratio.denominator)


STORED_PLACES = Decimal("1e-10")  # the schema's NUMERIC(30, 10)


def stored(value: Decimal) -> Decimal:
    """Round to what the database keeps. State the engine decides on (marks, equity, peaks) is kept at this
    precision, so a restart from the database continues with exactly the same numbers."""
    return value.quantize(STORED_PLACES)


def to_decimal(value: float) -> Decimal:
    """A float price as the decimal it was written as (the shortest repr that round-trips)."""
    return Decimal(repr(value))


class Side(StrEnum):
    """Order and fill direction."""

    BUY = "buy"
    SELL = "sell"

    @property
    def sign(self) -> int:
        """+1 for buys, -1 for sells."""
        return 1 if self is Side.BUY else -1


class OrderStatus(StrEnum):
    """Lifecycle of an order, in the brokers' own words, plus UNKNOWN: the broker's answer was lost (a
    timeout, a 5xx), and only reconciliation, which asks the broker by client order id, settles it."""

    NEW = "new"  # journaled; being sent, or working at the broker
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELED = "canceled"
    REJECTED = "rejected"
    EXPIRED = "expired"
    UNKNOWN = "unknown"

    @property
    def is_open(self) -> bool:
        """Still able to fill."""
        return self not in _TERMINAL

    def may_become(self, other: OrderStatus) -> bool:
        """Whether an update may move an order from this status to `other`: an order never leaves a final
        status, and a partial fill never goes back to new (updates can arrive out of order)."""
        if self in _TERMINAL:
            return False
        return not (self is OrderStatus.PARTIALLY_FILLED and other in (OrderStatus.NEW, OrderStatus.UNKNOWN))


_TERMINAL = {OrderStatus.FILLED, OrderStatus.CANCELED, OrderStatus.REJECTED, OrderStatus.EXPIRED}


def client_order_id(book: str, strategy: str, symbol: str, bar_ts: datetime, sequence: int = 0) -> str:
    """Deterministic id: replaying the same bar after a restart yields the same id, so the journal dedupes.

    The book is part of it: two books (the daemon's and a backtest) trading the same bar are two orders.
    The time is taken in UTC, so one instant is one id whatever its zone. Hashed and short because
    exchanges cap the length (binance: 36 characters)."""
    key = f"{book}|{strategy}|{symbol}|{bar_ts.astimezone(UTC).isoformat()}|{sequence}"
    return "pb-" + hashlib.sha256(key.encode()).hexdigest()[:29]


@dataclass(frozen=True, slots=True)
class OrderIntent:
    """A risk-approved market order, journaled before it is sent."""

    client_order_id: str
    strategy: str
    symbol: str
    side: Side
    qty: Decimal
    bar_ts: datetime


@dataclass(frozen=True, slots=True)
class OpenOrder:
    """An order the journal holds as still able to fill: its intent and how far it got."""

    intent: OrderIntent
    status: OrderStatus
    filled_qty: Decimal = Decimal(0)
    broker_order_id: str | None = None

    @property
    def remaining(self) -> Decimal:
        """Quantity still to fill."""
        return self.intent.qty - self.filled_qty

    def split(self, ratio: Fraction) -> OpenOrder:
        """The order after a split of its symbol: `ratio` times the quantities, as a venue adjusts them."""
        intent = replace(self.intent, qty=split_qty(self.intent.qty, ratio))
        return replace(self, intent=intent, filled_qty=split_qty(self.filled_qty, ratio))


@dataclass(frozen=True, slots=True)
class BrokerOrder:
    """The broker's view of an order; `filled_qty` is cumulative."""

    client_order_id: str
    broker_order_id: str | None
    status: OrderStatus
    filled_qty: Decimal = Decimal(0)
    avg_fill_price: Decimal | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution, as the broker reports it. Its id is unique at the broker, so whichever path reports
    it (the event stream, a poll, reconciliation), it is recorded once. Cash moves by
    -sign*qty*price - commission."""

    broker_fill_id: str
    client_order_id: str
    symbol: str
    side: Side
    qty: Decimal
    price: Decimal
    commission: Decimal
    ts: datetime

    @property
    def cash_delta(self) -> Decimal:
        """The change of cash this fill causes."""
        return -self.side.sign * self.qty * self.price - self.commission

    @property
    def signed_qty(self) -> Decimal:
        """Position change: positive for buys."""
        return self.side.sign * self.qty


FILL_MEMORY = timedelta(hours=1)
"""How far before the oldest fill a broker may still report (the oldest open order's bar, or the latest
fill) fills are kept in memory. A daemon that runs for months must not keep them all."""


class RecentFills:
    """The fills seen lately, by broker fill id, in the order they came: enough to drop a fill that a
    second path reports again (the stream, then a reconciliation sweep) without keeping every id a
    long-running daemon ever saw. Whether an older fill is known is the journal's to say."""

    def __init__(self) -> None:
        self._fills: dict[str, Fill] = {}
        self.horizon: datetime | None = None  # fills before this were forgotten

    def __contains__(self, fill_id: object) -> bool:
        return fill_id in self._fills

    def __iter__(self) -> Iterator[str]:
        return iter(self._fills)

    def __len__(self) -> int:
        return len(self._fills)

    def add(self, fill: Fill) -> None:
        """Remember a fill."""
        self._fills[fill.broker_fill_id] = fill

    def since(self, ts: datetime) -> list[Fill]:
        """The remembered fills at or after `ts`, in the order they came."""
        return [f for f in self._fills.values() if f.ts >= ts]

    def forgotten(self, fill: Fill) -> bool:
        """True when `fill` is older than what is remembered: only the journal knows whether it was seen."""
        return self.horizon is not None and fill.ts < self.horizon

    def forget_before(self, horizon: datetime) -> None:
        """Drop the fills before `horizon` (from the oldest on: they come in time order, near enough)."""
        self.horizon = horizon if self.horizon is None else max(self.horizon, horizon)
        while self._fills:
            oldest = next(iter(self._fills.values()))
            if oldest.ts >= self.horizon:
                break
            del self._fills[oldest.broker_fill_id]


@dataclass(frozen=True, slots=True)
class OrderUpdate:
    """What a broker says happened to one order: its state now and, when it filled, the execution. A fill
    found by a query of executions comes without the order's state, which then follows from its fills."""

    order: BrokerOrder | None
    ts: datetime
    fill: Fill | None = None

    @property
    def client_order_id(self) -> str:
        """The order this update is about."""
        if self.order is not None:
            return self.order.client_order_id
        assert self.fill is not None, "an update carries an order, a fill, or both"
        return self.fill.client_order_id
