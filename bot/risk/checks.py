"""Pre-trade checks. Every order passes every check, in a fixed order; each may pass, resize (to the
largest quantity that passes) or deny, and says why with a stable code."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from bot.config import RiskSettings
from bot.orders import Side
from bot.risk.sizing import OrderRequest, PortfolioView, floor_lots
from bot.risk.state import TradingState


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


def _abs_limit_qty(current: Decimal, sign: int, limit_abs: Decimal) -> Decimal:
    """Largest q >= 0 such that the new position is within `limit_abs`, or is a reduction of `current`:
    an order against the position may close it and open at most `limit_abs` on the other side."""
    if sign * current < 0:
        return abs(current) + limit_abs
    return max(Decimal(0), limit_abs - abs(current))


Check = Callable[[OrderRequest, Decimal, PortfolioView], tuple[Decimal, str]]


class RiskEngine:
    """Runs the checks for one strategy's orders. Stateless: the view carries the account and state."""

    def __init__(self, risk: RiskSettings) -> None:
        self._risk = risk
        self._checks: tuple[tuple[str, Check], ...] = (
            ("trading_state", self._trading_state),
            ("max_drawdown", self._max_drawdown),
            ("max_position", self._max_position),
            ("max_gross_exposure", self._max_gross_exposure),
            ("max_order_notional", self._max_order_notional),
            ("cash", self._cash),
        )

    def evaluate(self, request: OrderRequest, view: PortfolioView) -> RiskDecision:
        """Apply every check in order; a deny stops the chain (nothing is left to size)."""
        results: list[CheckResult] = []
        reason: str | None = None
        qty = floor_lots(request.qty, self._risk.lot_size)
        if qty < request.qty:  # sizing already rounds; this catches a request from anywhere else
            lots = f"whole lots of {self._risk.lot_size}"
            if qty <= 0:
                results.append(CheckResult("lot_size", CheckOutcome.DENY, qty, lots))
                return RiskDecision(request, Decimal(0), RiskOutcome.DENIED, "lot_size", tuple(results))
            results.append(CheckResult("lot_size", CheckOutcome.RESIZE, qty, lots))
            reason = "lot_size"
        for code, check in self._checks:
            allowed, detail = check(request, qty, view)
            allowed = floor_lots(min(qty, allowed), self._risk.lot_size)
            if allowed <= 0:
                results.append(CheckResult(code, CheckOutcome.DENY, Decimal(0), detail))
                return RiskDecision(request, Decimal(0), RiskOutcome.DENIED, code, tuple(results))
            if allowed < qty:
                results.append(CheckResult(code, CheckOutcome.RESIZE, allowed, detail))
                reason = reason or code
                qty = allowed
            else:
                results.append(CheckResult(code, CheckOutcome.PASS, qty, detail))
        outcome = RiskOutcome.APPROVED if qty == request.qty else RiskOutcome.RESIZED
        return RiskDecision(request, qty, outcome, reason, tuple(results))

    @staticmethod
    def _increases(request: OrderRequest, view: PortfolioView) -> bool:
        return request.side.sign * view.exposure(request.symbol) >= 0

    def _trading_state(self, request: OrderRequest, qty: Decimal, view: PortfolioView) -> tuple[Decimal, str]:
        if view.state is TradingState.HALTED:
            return Decimal(0), "trading is HALTED"
        if view.state is TradingState.REDUCING:
            if self._increases(request, view):
                return Decimal(0), "REDUCING: order would not shrink the position"
            return abs(view.exposure(request.symbol)), "REDUCING: at most down to flat"
        return qty, "ACTIVE"

    def _max_drawdown(self, request: OrderRequest, qty: Decimal, view: PortfolioView) -> tuple[Decimal, str]:
        detail = f"drawdown {view.drawdown:.2%} vs limit {self._risk.max_drawdown:.2%}"
        if view.drawdown < self._risk.max_drawdown:
            return qty, detail
        if self._increases(request, view):
            return Decimal(0), detail
        return abs(view.exposure(request.symbol)), detail + ": at most down to flat"

    def _max_position(self, request: OrderRequest, qty: Decimal, view: PortfolioView) -> tuple[Decimal, str]:
        limit_notional = view.equity * Decimal(repr(self._risk.max_position_fraction))
        limit_qty = floor_lots(limit_notional / request.price, self._risk.lot_size)
        allowed = _abs_limit_qty(view.exposure(request.symbol), request.side.sign, limit_qty)
        return allowed, f"position limit {limit_qty} ({self._risk.max_position_fraction:.0%} of equity)"

    def _max_gross_exposure(
        self, request: OrderRequest, qty: Decimal, view: PortfolioView
    ) -> tuple[Decimal, str]:
        limit = view.equity * Decimal(repr(self._risk.max_gross_exposure))
        gross = view.gross_exposure()
        current = view.exposure(request.symbol)
        # This symbol may hold what it holds now plus whatever room the whole book has left.
        symbol_limit = abs(current) + max(Decimal(0), limit - gross) / request.price
        allowed = _abs_limit_qty(current, request.side.sign, symbol_limit)
        return allowed, f"gross {gross:.2f} of limit {limit:.2f}"

    def _max_order_notional(
        self, request: OrderRequest, qty: Decimal, view: PortfolioView
    ) -> tuple[Decimal, str]:
        limit = self._risk.max_order_notional
        return limit / request.price, f"order notional {qty * request.price:.2f} vs limit {limit}"

    def _cash(self, request: OrderRequest, qty: Decimal, view: PortfolioView) -> tuple[Decimal, str]:
        current = view.exposure(request.symbol)
        if request.side is Side.SELL and current > 0:
            return min(qty, current) + self._cash_room(request, view), "sell of a long frees cash"
        room = self._cash_room(request, view)
        return room, f"cash room {room * request.price:.2f}"

    def _cash_room(self, request: OrderRequest, view: PortfolioView) -> Decimal:
        """Quantity the free cash covers, with a buffer for slippage, commission and the overnight gap."""
        free = view.cash - view.pending_buy_notional()
        per_unit = request.price * (1 + Decimal(repr(self._risk.cash_buffer)))
        return max(Decimal(0), free / per_unit)
