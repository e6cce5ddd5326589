"""Sizing: a target weight becomes an order quantity, in whole lots, against the current position.

The full position (weight 1) comes from the strategy's sizing mode: a fixed fraction of equity, the
notional that hits a target volatility, or a capped fractional Kelly bet on the model's forecast."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from typing import Any

from bot.config import RiskSettings, SizingSettings
from bot.orders import Side
from bot.risk.exposure import ExposureTotals
from bot.risk.state import TradingState
from bot.settings import SymbolRules
from bot.strategy import Target

_YEAR = timedelta(days=365.25)


def floor_lots(qty: Decimal, lot: Decimal) -> Decimal:
    """Largest multiple of `lot` not above `qty` (qty >= 0)."""
    if qty <= 0:
        return Decimal(0)
    # quantize: keep the lot's exponent, so 100 shares print as "100", never "1E+2"
    return ((qty / lot).to_integral_value(rounding=ROUND_FLOOR) * lot).quantize(lot)


@dataclass(frozen=True, slots=True)
class OrderRules:
    """A symbol's order rules: config override, else the broker's market info, else the strategy's."""

    lot_size: Decimal
    min_qty: Decimal
    min_notional: Decimal
    price_precision: int | None
    max_position_qty: Decimal | None

    def round_price(self, price: Decimal) -> Decimal:
        """A reference price at the symbol's price precision."""
        if self.price_precision is None:
            return price
        return price.quantize(Decimal(1).scaleb(-self.price_precision), rounding=ROUND_HALF_EVEN)


def order_rules(risk: RiskSettings, symbol: str, market: SymbolRules | None = None) -> OrderRules:
    """Resolve `symbol`'s rules: `[strategies.risk.symbols.SYMBOL]`, then `market`, then the globals."""
    own = risk.symbols.get(symbol) or SymbolRules()
    broker = market or SymbolRules()

    def first(name: str) -> Any:
        return next((v for v in (getattr(own, name), getattr(broker, name)) if v is not None), None)

    lot, min_qty, min_notional = first("lot_size"), first("min_qty"), first("min_notional")
    price_precision = first("price_precision")
    return OrderRules(
        lot_size=risk.lot_size if lot is None else lot,
        min_qty=risk.min_qty if min_qty is None else min_qty,
        min_notional=risk.min_notional if min_notional is None else min_notional,
        price_precision=risk.price_precision if price_precision is None else price_precision,
        max_position_qty=first("max_position_qty"),
    )


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
    daily_loss: float = 0.0
    orders_today: int = 0
    orders_this_second: int = 0
    totals: ExposureTotals | None = None  # the engine's running totals over these same mappings

    @classmethod
    def over(cls, totals: ExposureTotals, **state: Any) -> PortfolioView:
        """A view whose positions, open orders, marks and exposure totals are `totals`' (no copies)."""
        return cls(
            positions=totals.positions, pending=totals.pending, marks=totals.marks, totals=totals, **state
        )

    def exposure(self, symbol: str) -> Decimal:
        """Signed quantity once every open order has filled."""
        return self.positions.get(symbol, Decimal(0)) + self.pending.get(symbol, Decimal(0))

    def _fresh(self) -> ExposureTotals:
        return ExposureTotals.of(self.positions, dict(self.pending), self.marks)

    def gross_exposure(self) -> Decimal:
        """Absolute market value of all exposures, open orders included."""
        return (self.totals or self._fresh()).gross

    def net_exposure(self) -> Decimal:
        """Signed market value of all exposures (longs minus shorts), open orders included."""
        return (self.totals or self._fresh()).net

    def pending_buy_notional(self) -> Decimal:
        """Cash already promised to open buy orders."""
        return (self.totals or self._fresh()).pending_buy


@dataclass(frozen=True, slots=True)
class BarContext:
    """The bar an order is decided on, as the stale-data and price-band guards need it."""

    now: datetime  # the engine's clock at the decision
    close_time: datetime
    interval: timedelta
    previous_ts: datetime | None
    previous_close: Decimal | None
    ts: datetime


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """An order the strategy wants, before the risk checks. `reduce_only` marks the engine's own
    flattening orders after a breach: they may only shrink a position, and may do so while HALTED."""

    strategy: str
    symbol: str
    bar_ts: datetime
    side: Side
    qty: Decimal
    price: Decimal
    bar: BarContext | None = None
    reduce_only: bool = False


class Sizer:
    """The full-position notional of each symbol, from the strategy's sizing mode.

    Keeps, per symbol, the last `vol_window` log returns (close to close) and the last `error_window`
    forecast errors (the bar's open-to-close log return minus the forecast made for it)."""

    def __init__(self, sizing: SizingSettings, risk: RiskSettings, interval: timedelta) -> None:
        self._sizing = sizing
        self._cap = risk.max_position_fraction
        self._bars_per_year = sizing.bars_per_year or _YEAR / interval
        self._returns: dict[str, deque[float]] = {}
        self._errors: dict[str, deque[float]] = {}
        self._last_close: dict[str, float] = {}
        self._forecast: dict[str, float] = {}

    def observe_bar(self, symbol: str, open_: float, close: float) -> None:
        """A closed bar: its return, and the error of the forecast that was made for it."""
        previous = self._last_close.get(symbol)
        if previous is not None and previous > 0 and close > 0:
            self._returns.setdefault(symbol, deque(maxlen=self._sizing.vol_window)).append(
                math.log(close / previous)
            )
        self._last_close[symbol] = close
        forecast = self._forecast.pop(symbol, None)
        if forecast is not None and open_ > 0 and close > 0:
            self._errors.setdefault(symbol, deque(maxlen=self._sizing.error_window)).append(
                math.log(close / open_) - forecast
            )

    def observe_forecast(self, symbol: str, predicted_return: float) -> None:
        """The forecast for the symbol's next bar."""
        self._forecast[symbol] = predicted_return

    def realized_vol(self, symbol: str) -> float | None:
        """Annualised volatility of the recent returns, or None with fewer than two."""
        returns = self._returns.get(symbol)
        if not returns or len(returns) < 2:
            return None
        mean = sum(returns) / len(returns)
        var = sum((r - mean) ** 2 for r in returns) / (len(returns) - 1)
        return math.sqrt(var * self._bars_per_year)

    def error_variance(self, symbol: str) -> float | None:
        """Mean squared forecast error over the window, or None with fewer than two errors."""
        errors = self._errors.get(symbol)
        if not errors or len(errors) < 2:
            return None
        return sum(e * e for e in errors) / len(errors)

    def full_fraction(self, symbol: str, predicted_return: float) -> float:
        """The full position as a fraction of equity, never above max_position_fraction.

        Without enough history yet, vol targeting and Kelly size nothing rather than guess."""
        mode = self._sizing.mode
        if mode == "fixed_fraction":
            fraction = self._sizing.fraction or self._cap
        elif mode == "vol_target":
            vol = self.realized_vol(symbol)
            fraction = 0.0 if not vol else self._sizing.target_vol / vol
        else:
            var = self.error_variance(symbol)
            kelly = 0.0 if not var else self._sizing.kelly_fraction * abs(predicted_return) / var
            fraction = min(kelly, self._sizing.kelly_cap)
        return max(0.0, min(fraction, self._cap))


def plan_order(
    target: Target,
    view: PortfolioView,
    price: Decimal,
    risk: RiskSettings,
    rebalance_band: float,
    *,
    full_fraction: float | None = None,
    rules: OrderRules | None = None,
    bar: BarContext | None = None,
) -> OrderRequest | None:
    """The order that moves the exposure to the target, or None when the change is inside the band.

    The full position is `full_fraction` of equity (default: max_position_fraction); the band is measured
    against the maximum position, so a sizing mode that shrinks the position does not widen it."""
    rules = rules or order_rules(risk, target.symbol)
    price = rules.round_price(price)
    max_notional = view.equity * Decimal(repr(risk.max_position_fraction))
    full = max_notional if full_fraction is None else view.equity * Decimal(repr(full_fraction))
    raw = Decimal(repr(target.weight)) * full / price
    target_qty = floor_lots(abs(raw), rules.lot_size) * (1 if raw >= 0 else -1)
    delta = target_qty - view.exposure(target.symbol)
    if delta == 0:
        return None
    # Small rebalances cost more than they earn; closing out to flat is always allowed.
    if target_qty != 0 and abs(delta) * price < Decimal(repr(rebalance_band)) * max_notional:
        return None
    side = Side.BUY if delta > 0 else Side.SELL
    return OrderRequest(target.strategy, target.symbol, target.bar_ts, side, abs(delta), price, bar)
