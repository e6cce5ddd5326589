"""Pre-trade checks. Every order passes every check, in a fixed order; each may pass, resize (to the
largest quantity that passes) or deny, and says why with a stable code (CHECK_CODES).

After a deny the remaining checks still run on the quantity that reached the deny, so the stored
decision shows every check's verdict; the order itself is dead (approved quantity 0)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from bot.config import RiskSettings
from bot.orders import Side
from bot.risk.sizing import OrderRequest, OrderRules, PortfolioView, floor_lots, order_rules
from bot.risk.state import TradingState
from bot.settings import SymbolRules


class CheckOutcome(StrEnum):
    """One check's verdict."""

    PASS = "pass"
    RESIZE = "resize"
    DENY = "deny"


class RiskOutcome(StrEnum):
    """The verdict on the whole order."""

    APPROVED = "approved"
    RESIZED = "resized"
    DENIED = "denied"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What one check did to the quantity."""

    code: str
    outcome: CheckOutcome
    qty: Decimal
    detail: str


@dataclass(frozen=True, slots=True)
class RiskDecision:
    """The request, every check's result, and the quantity that may be sent (0 when denied)."""

    request: OrderRequest
    approved_qty: Decimal
    outcome: RiskOutcome
    reason: str | None
    checks: tuple[CheckResult, ...]

    @property
    def strategy(self) -> str:
        """Strategy of the request."""
        return self.request.strategy

    @property
    def bar_ts(self) -> datetime:
        """Bar the decision was taken on."""
        return self.request.bar_ts

    def checks_json(self) -> str:
        """Each check's outcome, for the risk_decisions row."""
        return json.dumps(
            [
                {"code": c.code, "outcome": c.outcome.value, "qty": str(c.qty), "detail": c.detail}
                for c in self.checks
            ]
        )


CHECK_CODES: tuple[str, ...] = (
    "lot_size",
    "trading_state",
    "max_position",
    "max_gross_exposure",
    "max_net_exposure",
    "max_order_notional",
    "cash",
    "order_rate",
    "max_drawdown",
    "daily_loss",
    "stale_data",
    "price_band",
    "min_order",
)
"""Every check, in the order it runs. The codes are stable: reports and scripts filter on them."""


def _abs_limit_qty(current: Decimal, sign: int, limit_abs: Decimal) -> Decimal:
    """Largest q >= 0 such that the new position is within `limit_abs`, or is a reduction of `current`:
    an order against the position may close it and open at most `limit_abs` on the other side."""
    if sign * current < 0:
        return abs(current) + limit_abs
    return max(Decimal(0), limit_abs - abs(current))


def _frac(value: float) -> Decimal:
    return Decimal(repr(value))


Check = Callable[[OrderRequest, Decimal, PortfolioView, OrderRules], tuple[Decimal, str]]


class RiskEngine:
    """Runs the checks for one strategy's orders. Stateless: the view carries the account and state."""

    def __init__(self, risk: RiskSettings, market: Mapping[str, SymbolRules] | None = None) -> None:
        self._risk = risk
        self._market = dict(market or {})
        self._rules: dict[str, OrderRules] = {}
        checks: dict[str, Check] = {
            "lot_size": self._lot_size,
            "trading_state": self._trading_state,
            "max_position": self._max_position,
            "max_gross_exposure": self._max_gross_exposure,
            "max_net_exposure": self._max_net_exposure,
            "max_order_notional": self._max_order_notional,
            "cash": self._cash,
            "order_rate": self._order_rate,
            "max_drawdown": self._max_drawdown,
            "daily_loss": self._daily_loss,
            "stale_data": self._stale_data,
            "price_band": self._price_band,
            "min_order": self._min_order,
        }
        self._checks = tuple((code, checks[code]) for code in CHECK_CODES)

    @property
    def settings(self) -> RiskSettings:
        """The limits this engine enforces."""
        return self._risk

    def with_market(self, market: Mapping[str, SymbolRules]) -> RiskEngine:
        """The same limits with the broker's market info (lots, minimums, precision) under the config's."""
        return RiskEngine(self._risk, market)

    def rules(self, symbol: str) -> OrderRules:
        """The symbol's resolved order rules."""
        rules = self._rules.get(symbol)
        if rules is None:
            rules = self._rules[symbol] = order_rules(self._risk, symbol, self._market.get(symbol))
        return rules

    def evaluate(self, request: OrderRequest, view: PortfolioView) -> RiskDecision:
        """Apply every check in order. A resize carries on with the smaller quantity; a deny kills the
        order, and the checks after it still run (on the quantity that reached it) for the record."""
        rules = self.rules(request.symbol)
        results: list[CheckResult] = []
        resized_by: str | None = None
        denied_by: str | None = None
        qty = request.qty
        floored = False  # qty is a floor_lots result, which floor_lots leaves exactly as it is
        for code, check in self._checks:
            allowed, detail = check(request, qty, view, rules)
            allowed = qty if floored and allowed >= qty else floor_lots(min(qty, allowed), rules.lot_size)
            floored = True
            if allowed <= 0:
                results.append(CheckResult(code, CheckOutcome.DENY, Decimal(0), detail))
                denied_by = denied_by or code
            elif allowed < qty:
                results.append(CheckResult(code, CheckOutcome.RESIZE, allowed, detail))
                resized_by = resized_by or code
                qty = allowed
            else:
                results.append(CheckResult(code, CheckOutcome.PASS, qty, detail))
        if denied_by is not None:
            return RiskDecision(request, Decimal(0), RiskOutcome.DENIED, denied_by, tuple(results))
        outcome = RiskOutcome.APPROVED if qty == request.qty else RiskOutcome.RESIZED
        return RiskDecision(request, qty, outcome, resized_by, tuple(results))

    @staticmethod
    def _increases(request: OrderRequest, view: PortfolioView) -> bool:
        return request.side.sign * view.exposure(request.symbol) >= 0

    def _reduction_only(self, request: OrderRequest, view: PortfolioView, why: str) -> tuple[Decimal, str]:
        """Deny an increase; cap a reduction at flat."""
        if self._increases(request, view):
            return Decimal(0), f"{why}: order would not shrink the position"
        return abs(view.exposure(request.symbol)), f"{why}: at most down to flat"

    def _lot_size(
        self, request: OrderRequest, qty: Decimal, view: PortfolioView, rules: OrderRules
    ) -> tuple[Decimal, str]:
        return qty, f"whole lots of {rules.lot_size}"

    def _trading_state(
        self, request: OrderRequest, qty: Decimal, view: PortfolioView, rules: OrderRules
    ) -> tuple[Decimal, str]:
        if view.state is TradingState.HALTED:
            if request.reduce_only:  # the engine's flattening after a breach
                return self._reduction_only(request, view, "HALTED, flattening")
            return Decimal(0), "trading is HALTED"
        if view.state is TradingState.REDUCING:
            return self._reduction_only(request, view, "REDUCING")
        if request.reduce_only:
            return self._reduction_only(request, view, "reduce-only")
        return qty, "ACTIVE"

    def _max_position(
        self, request: OrderRequest, qty: Decimal, view: PortfolioView, rules: OrderRules
    ) -> tuple[Decimal, str]:
        risk = self._risk
        limits = [view.equity * _frac(risk.max_position_fraction)]
        if risk.max_position_notional is not None:
            limits.append(risk.max_position_notional)
        limit_qty = floor_lots(min(limits) / request.price, rules.lot_size)
        if rules.max_position_qty is not None:
            limit_qty = min(limit_qty, floor_lots(rules.max_position_qty, rules.lot_size))
        allowed = _abs_limit_qty(view.exposure(request.symbol), request.side.sign, limit_qty)
        return allowed, f"position limit {limit_qty} ({risk.max_position_fraction:.0%} of equity)"

    def _max_gross_exposure(
        self, request: OrderRequest, qty: Decimal, view: PortfolioView, rules: OrderRules
    ) -> tuple[Decimal, str]:
        limit = view.equity * _frac(self._risk.max_gross_exposure)
        gross = view.gross_exposure()
        current = view.exposure(request.symbol)
        # This symbol may hold what it holds now plus whatever room the whole book has left.
        symbol_limit = abs(current) + max(Decimal(0), limit - gross) / request.price
        allowed = _abs_limit_qty(current, request.side.sign, symbol_limit)
        return allowed, f"gross {gross:.2f} of limit {limit:.2f}"

    def _max_net_exposure(
        self, request: OrderRequest, qty: Decimal, view: PortfolioView, rules: OrderRules
    ) -> tuple[Decimal, str]:
        if self._risk.max_net_exposure is None:
            return qty, "off"
        limit = view.equity * _frac(self._risk.max_net_exposure)
        net = view.net_exposure()
        # The book's net, in units of this symbol: the order may bring it back and beyond, up to the limit.
        allowed = _abs_limit_qty(net / request.price, request.side.sign, limit / request.price)
        return allowed, f"net {net:.2f} of limit {limit:.2f}"

    def _max_order_notional(
        self, request: OrderRequest, qty: Decimal, view: PortfolioView, rules: OrderRules
    ) -> tuple[Decimal, str]:
        limit = self._risk.max_order_notional
        return limit / request.price, f"order notional {qty * request.price:.2f} vs limit {limit}"

    def _cash(
        self, request: OrderRequest, qty: Decimal, view: PortfolioView, rules: OrderRules
    ) -> tuple[Decimal, str]:
        current = view.exposure(request.symbol)
        if request.side is Side.SELL and current > 0:
            return min(qty, current) + self._cash_room(request, view), "sell of a long frees cash"
        room = self._cash_room(request, view)
        return room, f"cash room {room * request.price:.2f}"

    def _cash_room(self, request: OrderRequest, view: PortfolioView) -> Decimal:
        """Quantity the free cash covers, with a buffer for slippage, commission and the overnight gap."""
        free = view.cash - view.pending_buy_notional()
        per_unit = request.price * (1 + _frac(self._risk.cash_buffer))
        return max(Decimal(0), free / per_unit)

    def _order_rate(
        self, request: OrderRequest, qty: Decimal, view: PortfolioView, rules: OrderRules
    ) -> tuple[Decimal, str]:
        per_second, per_day = self._risk.max_orders_per_second, self._risk.max_orders_per_day
        detail = (
            f"orders this second {view.orders_this_second}/{per_second or '-'},"
            f" today {view.orders_today}/{per_day or '-'}"
        )
        if per_second is not None and view.orders_this_second >= per_second:
            return Decimal(0), detail
        if per_day is not None and view.orders_today >= per_day:
            return Decimal(0), detail
        return qty, detail

    def _max_drawdown(
        self, request: OrderRequest, qty: Decimal, view: PortfolioView, rules: OrderRules
    ) -> tuple[Decimal, str]:
        detail = f"drawdown {view.drawdown:.2%} vs limit {self._risk.max_drawdown:.2%}"
        if view.drawdown < self._risk.max_drawdown:
            return qty, detail
        return self._reduction_only(request, view, detail)

    def _daily_loss(
        self, request: OrderRequest, qty: Decimal, view: PortfolioView, rules: OrderRules
    ) -> tuple[Decimal, str]:
        limit = self._risk.daily_loss_limit
        if limit is None:
            return qty, "off"
        detail = f"daily loss {view.daily_loss:.2%} vs limit {limit:.2%}"
        if view.daily_loss < limit:
            return qty, detail
        return self._reduction_only(request, view, detail)

    def _stale_data(
        self, request: OrderRequest, qty: Decimal, view: PortfolioView, rules: OrderRules
    ) -> tuple[Decimal, str]:
        bar, risk = request.bar, self._risk
        if bar is None:
            return qty, "no bar context"
        age = (bar.now - bar.close_time).total_seconds()
        if risk.max_bar_age_seconds is not None and age > risk.max_bar_age_seconds:
            return Decimal(0), f"bar closed {age:.0f}s ago > {risk.max_bar_age_seconds:g}s"
        if risk.max_gap_bars is not None and bar.previous_ts is not None:
            gap = (bar.ts - bar.previous_ts) / bar.interval
            if gap > risk.max_gap_bars:
                return Decimal(0), f"feed gap of {gap:g} bars > {risk.max_gap_bars:g}"
        return qty, f"bar age {age:.0f}s"

    def _price_band(
        self, request: OrderRequest, qty: Decimal, view: PortfolioView, rules: OrderRules
    ) -> tuple[Decimal, str]:
        band = self._risk.price_band
        previous = None if request.bar is None else request.bar.previous_close
        if band is None or previous is None or previous <= 0:
            return qty, "off" if band is None else "no previous close"
        jump = abs(request.price / previous - 1)
        detail = f"close {request.price} vs last {previous}: {jump:.2%} vs band {band:.2%}"
        return (Decimal(0) if jump > _frac(band) else qty), detail

    def _min_order(
        self, request: OrderRequest, qty: Decimal, view: PortfolioView, rules: OrderRules
    ) -> tuple[Decimal, str]:
        detail = f"min qty {rules.min_qty}, min notional {rules.min_notional}"
        if qty < rules.min_qty or qty * request.price < rules.min_notional:
            return Decimal(0), detail
        return qty, detail
