"""Online drift detection (river): on each symbol's realized prediction error and on its returns."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from river import drift

from bot.alerts import Alert, AlertKind, Severity


@dataclass(frozen=True, slots=True)
class DriftConfig:
    """Detector settings; defaults follow river's and were checked on this data to fire rarely."""

    adwin_delta: float = 0.002
    ph_threshold: float = 50.0
    ph_min_instances: int = 30


class _SymbolDrift:
    def __init__(self, config: DriftConfig) -> None:
        self.error = drift.ADWIN(delta=config.adwin_delta)
        self.returns = drift.PageHinkley(
            min_instances=config.ph_min_instances, threshold=config.ph_threshold, mode="both"
        )
        self.pending: tuple[datetime, float] | None = None  # last prediction, awaiting its outcome


class DriftMonitor:
    """Per strategy. `observe` takes each bar's realized return (what the previous prediction was about)
    and the new prediction; it returns an alert when a detector fires."""

    def __init__(self, strategy: str, target_scale: float, config: DriftConfig | None = None) -> None:
        self._strategy = strategy
        self._scale = target_scale or 1.0
        self._config = config or DriftConfig()
        self._symbols: dict[str, _SymbolDrift] = {}

    def observe_outcome(self, symbol: str, ts: datetime, realized: float) -> list[Alert]:
        """Feed the realized return of the bar that the last prediction was about."""
        state = self._state(symbol)
        alerts: list[Alert] = []
        if not math.isfinite(realized):
            return alerts
        state.returns.update(realized / self._scale)
        if state.returns.drift_detected:
            alerts.append(self._alert(symbol, ts, "returns", "return distribution shifted (Page-Hinkley)"))
        if state.pending is not None:
            predicted = state.pending[1]
            state.error.update(abs(predicted - realized) / self._scale)
            if state.error.drift_detected:
                alerts.append(
                    self._alert(
                        symbol,
                        ts,
                        "prediction_error",
                        f"prediction error level changed (ADWIN), mean now "
                        f"{state.error.estimation * self._scale:.5f}",
                    )
                )
        return alerts

    def observe_prediction(self, symbol: str, ts: datetime, predicted: float) -> None:
        """Remember a prediction until its outcome arrives."""
        self._state(symbol).pending = (ts, predicted)

    def _state(self, symbol: str) -> _SymbolDrift:
        # Not setdefault: that would build two river detectors per call only to throw them away.
        state = self._symbols.get(symbol)
        if state is None:
            state = self._symbols[symbol] = _SymbolDrift(self._config)
        return state

    def _alert(self, symbol: str, ts: datetime, detector: str, message: str) -> Alert:
        return Alert(
            ts, Severity.WARNING, AlertKind.DRIFT, message, self._strategy, symbol, {"detector": detector}
        )
