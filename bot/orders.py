"""The values that travel from risk through the journal to the broker and back."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum

# Every amount is quantized to this many fractional digits before it is stored: the schema keeps 10,
# so PostgreSQL and SQLite always hold the same number.
MONEY_PLACES = Decimal("1e-8")


def money(value: Decimal) -> Decimal:
    """Round an amount (cash, price, commission) to the stored precision, half to even."""
    return value.quantize(MONEY_PLACES)


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
    """Lifecycle of an order. UNKNOWN means the broker did not answer: reconciliation settles it."""

    NEW = "new"  # journaled, not yet sent
    SUBMITTED = "submitted"
    ACCEPTED = "accepted"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    UNKNOWN = "unknown"

    @property
    def is_open(self) -> bool:
        """Still able to fill."""
        return self in _OPEN


_OPEN = {
    OrderStatus.NEW,
    OrderStatus.SUBMITTED,
    OrderStatus.ACCEPTED,
    OrderStatus.PARTIALLY_FILLED,
    OrderStatus.UNKNOWN,
}


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
class BrokerOrder:
    """The broker's view of an order."""

    client_order_id: str
    broker_order_id: str | None
    status: OrderStatus
    filled_qty: Decimal = Decimal(0)
    avg_fill_price: Decimal | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution. Cash moves by -sign*qty*price - commission."""

    broker_fill_id: str
    client_order_id: str
    strategy: str
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
