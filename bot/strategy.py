"""Strategy: a predicted return becomes a target weight, the share of the strategy's maximum position.

`Prediction` lives here, beside its consumer, not in `bot.model`: the journal, risk and the report commands
use it, and they must load without torch."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bot.config import StrategyConfig


@dataclass(frozen=True, slots=True)
class Prediction:
    """The model's forecast for one symbol at one bar's close."""

    strategy: str
    symbol: str
    bar_ts: datetime
    predicted_return: float
    horizon: int
    model_version: str


@dataclass(frozen=True, slots=True)
class Target:
    """Desired exposure in [-1, 1] of the maximum position the risk limits allow for the symbol."""

    strategy: str
    symbol: str
    bar_ts: datetime
    weight: float
    prediction: Prediction


class ForecastStrategy:
    """Linear in the forecast between a dead band and full size; long-only unless shorts are allowed.

    The dead band (`entry_threshold`) keeps costs down where the forecast is smaller than what a round trip
    costs; `full_signal_return` is the forecast at which the position reaches full size."""

    def __init__(self, config: StrategyConfig) -> None:
        self._config = config

    def target(self, prediction: Prediction) -> Target:
        """The target weight for one prediction."""
        r = prediction.predicted_return
        cfg = self._config
        weight = 0.0 if abs(r) <= cfg.entry_threshold else max(-1.0, min(1.0, r / cfg.full_signal_return))
        if not cfg.allow_short:
            weight = max(weight, 0.0)
        return Target(cfg.name, prediction.symbol, prediction.bar_ts, weight, prediction)
