"""Risk: sizing, pre-trade checks every order passes, and the persisted trading state."""

from bot.risk.checks import CHECK_CODES, CheckOutcome, CheckResult, RiskDecision, RiskEngine, RiskOutcome
from bot.risk.exposure import ExposureTotals
from bot.risk.sizing import (
    BarContext,
    OrderRequest,
    OrderRules,
    PortfolioView,
    Sizer,
    order_rules,
    plan_order,
)
from bot.risk.state import (
    OrderCounter,
    SavedState,
    StateCause,
    StateSource,
    TradingState,
    TradingStateChange,
    TradingStateTracker,
    day_start,
)

__all__ = [
    "CHECK_CODES",
    "BarContext",
    "CheckOutcome",
    "CheckResult",
    "ExposureTotals",
    "OrderCounter",
    "OrderRequest",
    "OrderRules",
    "PortfolioView",
    "RiskDecision",
    "RiskEngine",
    "RiskOutcome",
    "SavedState",
    "Sizer",
    "StateCause",
    "StateSource",
    "TradingState",
    "TradingStateChange",
    "TradingStateTracker",
    "day_start",
    "order_rules",
    "plan_order",
]
