"""Trading state (ACTIVE, REDUCING, HALTED) and the drawdown that moves it, measured on marked equity."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from bot.config import RiskSettings


class TradingState(StrEnum):
    """ACTIVE trades freely; REDUCING only shrinks positions; HALTED sends nothing."""

    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"


@dataclass(frozen=True, slots=True)
class TradingStateChange:
    """A transition, to be journaled and alerted."""

    scope: str
    previous: TradingState
    state: TradingState
    reason: str
    ts: datetime


class TradingStateTracker:
    """Tracks the equity peak and moves the state when drawdown from it crosses `max_drawdown`.

    Only an operator (or a later rule) lifts a breach: recovery of equity does not resume trading."""

    def __init__(
        self,
        scope: str,
        risk: RiskSettings,
        state: TradingState = TradingState.ACTIVE,
        peak: Decimal | None = None,
        reason: str | None = None,
    ) -> None:
        self.scope = scope
        self.state = state
        self.peak = peak
        self.reason = reason
        self._risk = risk

    def drawdown(self, equity: Decimal) -> float:
        """Fraction below the peak (0 at or above it)."""
        if not self.peak or self.peak <= 0:
            return 0.0
        return max(0.0, float((self.peak - equity) / self.peak))

    def update(self, equity: Decimal, ts: datetime) -> TradingStateChange | None:
        """Raise the peak, then check the drawdown limit."""
        if self.peak is None or equity > self.peak:
            self.peak = equity
        dd = self.drawdown(equity)
        if self.state is TradingState.ACTIVE and dd >= self._risk.max_drawdown:
            target = TradingState.HALTED if self._risk.on_breach == "halt" else TradingState.REDUCING
            return self.set_state(
                target,
                f"max_drawdown: {dd:.2%} from peak {self.peak} >= limit {self._risk.max_drawdown:.2%}",
                ts,
            )
        return None

    def set_state(self, state: TradingState, reason: str, ts: datetime) -> TradingStateChange | None:
        """Move to `state` (operator halt/resume, or a breach); None when nothing changes."""
        if state is self.state:
            return None
        change = TradingStateChange(self.scope, self.state, state, reason, ts)
        self.state, self.reason = state, reason
        return change
