"""Risk: sizing, pre-trade checks every order passes, and the persisted trading state."""

from bot.risk.checks import CheckOutcome, CheckResult, RiskDecision, RiskEngine, RiskOutcome
from bot.risk.sizing import OrderRequest, PortfolioView, plan_order
from bot.risk.state import TradingState, TradingStateChange, TradingStateTracker

__all__ = [
    "CheckOutcome",
    "CheckResult",
    "OrderRequest",
    "PortfolioView",
    "RiskDecision",
    "RiskEngine",
    "RiskOutcome",
    "TradingState",
    "TradingStateChange",
    "TradingStateTracker",
    "plan_order",
]
