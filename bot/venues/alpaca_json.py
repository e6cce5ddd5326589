"""Alpaca's JSON in paperbot's values: orders, executions and times. Plain code without alpaca-py, so the
broker can read trade updates and activities without importing the client library itself."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from bot.orders import BrokerOrder, Fill, OrderStatus, Side

# Alpaca's order states, in paperbot's words: everything still working is NEW.
_STATUS = {
    "partially_filled": OrderStatus.PARTIALLY_FILLED,
    "filled": OrderStatus.FILLED,
    "canceled": OrderStatus.CANCELED,
    "done_for_day": OrderStatus.CANCELED,
    "replaced": OrderStatus.CANCELED,
    "expired": OrderStatus.EXPIRED,
    "rejected": OrderStatus.REJECTED,
    "suspended": OrderStatus.REJECTED,
}
_FRACTION = re.compile(r"(\.\d{6})\d+")  # Alpaca sends nanoseconds; datetime keeps microseconds


def parse_time(text: str) -> datetime:
    """An RFC 3339 time from Alpaca (nanoseconds, 'Z' or an offset) as an aware UTC datetime."""
    return datetime.fromisoformat(_FRACTION.sub(r"\1", text).replace("Z", "+00:00")).astimezone(UTC)


def _number(value: Any) -> Decimal:
    return Decimal(str(value))


def fill_id(order_id: str, cumulative: Decimal) -> str:
    """One execution's id, the same from the trade stream and from the activities endpoint: the order and
    how much of it had filled after it (both paths report both; their own ids differ in form)."""
    return f"{order_id}:{format(cumulative.normalize(), 'f')}"


def order_from(data: Mapping[str, Any]) -> BrokerOrder:
    """An order JSON as paperbot's BrokerOrder."""
    avg = data.get("filled_avg_price")
    return BrokerOrder(
        client_order_id=data["client_order_id"],
        broker_order_id=data["id"],
        status=_STATUS.get(data["status"], OrderStatus.NEW),
        filled_qty=_number(data.get("filled_qty") or 0),
        avg_fill_price=None if avg is None else _number(avg),
    )


def fill_from_event(data: Mapping[str, Any], symbol: str) -> Fill | None:
    """The execution of a trade update (fill or partial_fill), None for other events. Its order is the
    order after the fill: `filled_qty` is the quantity filled so far."""
    if data.get("event") not in ("fill", "partial_fill"):
        return None
    order = data["order"]
    return _fill(
        data, symbol, order_id=order["id"], filled=order["filled_qty"], cid=order["client_order_id"],
        side=order["side"], at="timestamp",
    )  # fmt: skip


def fill_from_activity(data: Mapping[str, Any], client_order_id: str, symbol: str) -> Fill:
    """A FILL account activity as an execution."""
    return _fill(
        data, symbol, order_id=data["order_id"], filled=data["cum_qty"], cid=client_order_id,
        side=data["side"], at="transaction_time",
    )  # fmt: skip


def _fill(
    data: Mapping[str, Any], symbol: str, *, order_id: str, filled: Any, cid: str, side: str, at: str
) -> Fill:
    # Alpaca charges stocks no commission; its crypto fee comes out of the asset (README, known limits).
    return Fill(
        broker_fill_id=fill_id(order_id, _number(filled)),
        client_order_id=cid,
        symbol=symbol,
        side=Side(side),
        qty=_number(data["qty"]),
        price=_number(data["price"]),
        commission=Decimal(0),
        ts=parse_time(data[at]),
    )
