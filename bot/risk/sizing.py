"""Sizing: a target weight becomes an order quantity, in whole lots, against the current position."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal

from bot.config import RiskSettings
from bot.orders import Side
from bot.risk.state import TradingState
from bot.strategy import Target


def floor_lots(qty: Decimal, lot: Decimal) -> Decimal:
    """Largest multiple of `lot` not above `qty` (qty >= 0)."""
    if qty <= 0:
        return Decimal(0)
    # quantize: keep the lot's exponent, so 100 shares print as "100", never "1E+2"
    return ((qty / lot).to_integral_value(rounding=ROUND_FLOOR) * lot).quantize(lot)


@dataclass(frozen=True, slots=True)
class PortfolioView:
    """What risk sees of the account at one decision: positions include orders already in flight."""

    equity: Decimal
    cash: Decimal
    positions: Mapping[str, Decimal]
    pending: Mapping[str, Decimal]
    marks: Mapping[str, Decimal]
    drawdown: float
    state: TradingState

    def exposure(self, symbol: str) -> Decimal:
        """Signed quantity once every open order has filled."""
        return self.positions.get(symbol, Decimal(0)) + self.pending.get(symbol, Decimal(0))

    def gross_exposure(self) -> Decimal:
        """Absolute market value of all exposures, open orders included."""
        symbols = set(self.positions) | set(self.pending)
        return sum((abs(self.exposure(s)) * self.marks[s] for s in symbols if self.exposure(s)), Decimal(0))

    def pending_buy_notional(self) -> Decimal:
        """Cash already promised to open buy orders."""
        return sum((q * self.marks[s] for s, q in self.pending.items() if q > 0), Decimal(0))


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """An order the strategy wants, before the risk checks."""

    strategy: str
    symbol: str
    bar_ts: datetime
    side: Side
    qty: Decimal
    price: Decimal


def plan_order(
    target: Target, view: PortfolioView, price: Decimal, risk: RiskSettings, rebalance_band: float
) -> OrderRequest | None:
    """The order that moves the exposure to the target, or None when the change is inside the band."""
    max_notional = view.equity * Decimal(repr(risk.max_position_fraction))
    raw = Decimal(repr(target.weight)) * max_notional / price
    target_qty = floor_lots(abs(raw), risk.lot_size) * (1 if raw >= 0 else -1)
    delta = target_qty - view.exposure(target.symbol)
    if delta == 0:
        return None
    # Small rebalances cost more than they earn; closing out to flat is always allowed.
    if target_qty != 0 and abs(delta) * price < Decimal(repr(rebalance_band)) * max_notional:
        return None
    side = Side.BUY if delta > 0 else Side.SELL
    return OrderRequest(target.strategy, target.symbol, target.bar_ts, side, abs(delta), price)
