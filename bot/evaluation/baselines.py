"""Baselines the model must beat, as forecasters, so they trade through the same engine, risk and costs.

Each speaks the strategy's language, a predicted return: `signal` is the return that asks for a full
position (the strategy's `full_signal_return`), so "be long" is +signal and "be flat" is 0."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from bot.bars import Bar
from bot.model.forecaster import FloatArray, Forecaster


class ConstantForecaster:
    """Always the same forecast: 0 is the always-flat baseline, +signal is buy-and-hold."""

    horizons = (1,)  # next bar only

    def __init__(self, name: str, value: float) -> None:
        self._name = name
        self._value = value

    @property
    def version(self) -> str:
        """The baseline's name."""
        return self._name

    def observe(self, bar: Bar) -> None:
        """Keeps no state."""

    def predict(self, bars: Sequence[Bar], windows: npt.NDArray[np.floating[Any]]) -> FloatArray:
        """The constant, for every bar."""
        return np.full((len(bars), 1), self._value)


class MovingAverageCrossover:
    """Long (+signal) while the fast moving average of closes is above the slow one, else flat.

    Each average is summed afresh from the last closes (O(slow) a bar, cheap at these sizes) rather than
    kept as a running sum, whose rounding would depend on how long the history is."""

    horizons = (1,)  # next bar only

    def __init__(self, fast: int, slow: int, signal: float) -> None:
        if not 1 <= fast < slow:
            raise ValueError(f"need 1 <= fast < slow, got {fast}, {slow}")
        self._fast, self._slow, self._signal = fast, slow, signal
        self._closes: dict[str, deque[float]] = {}

    @property
    def version(self) -> str:
        """Names the windows."""
        return f"ma_crossover_{self._fast}_{self._slow}"

    def observe(self, bar: Bar) -> None:
        """Remember the close."""
        self._closes.setdefault(bar.symbol, deque(maxlen=self._slow)).append(bar.close)

    def predict(self, bars: Sequence[Bar], windows: npt.NDArray[np.floating[Any]]) -> FloatArray:
        """+signal where fast > slow (with a full slow window), else 0."""
        out = np.zeros((len(bars), 1))
        for i, bar in enumerate(bars):
            closes = self._closes.get(bar.symbol)
            if closes is None or len(closes) < self._slow:
                continue
            history = list(closes)
            if sum(history[-self._fast :]) / self._fast > sum(history) / self._slow:
                out[i, 0] = self._signal
        return out


class LinearForecaster:
    """Ridge regression of the next-bar return on the latest feature row (the LSTM's inputs, no sequence)."""

    horizons = (1,)  # next bar only

    def __init__(self, coef: FloatArray, intercept: float, mean: FloatArray, std: FloatArray) -> None:
        self._coef, self._intercept, self._mean, self._std = coef, intercept, mean, std

    @classmethod
    def fit(cls, rows: FloatArray, targets: FloatArray, alpha: float = 1.0) -> LinearForecaster:
        """Closed-form ridge on standardised features; `alpha` is per sample, the same at any n."""
        mean = rows.mean(axis=0)
        std = np.where(rows.std(axis=0) > 1e-12, rows.std(axis=0), 1.0)
        x = (rows - mean) / std
        y = targets - targets.mean()
        gram = x.T @ x + alpha * len(x) * np.eye(x.shape[1])
        coef = np.linalg.solve(gram, x.T @ y)
        return cls(coef, float(targets.mean()), mean, std)

    @property
    def version(self) -> str:
        """The baseline's name."""
        return "linear"

    def observe(self, bar: Bar) -> None:
        """Keeps no state: the feature windows are the state."""

    def predict(self, bars: Sequence[Bar], windows: npt.NDArray[np.floating[Any]]) -> FloatArray:
        """Linear in the last row of each window."""
        last = np.asarray(windows[:, -1, :], dtype=np.float64)
        predicted = ((last - self._mean) / self._std) @ self._coef + self._intercept
        return np.asarray(predicted[:, None], dtype=np.float64)


@dataclass(frozen=True)
class Fold:
    """A forecaster fitted on data before `start`, used for bars from `start` on."""

    start: datetime
    forecaster: Forecaster


class WalkForwardForecaster:
    """Delegates each bar to the latest fold that started at or before it: every prediction comes from a
    forecaster fitted only on earlier data."""

    def __init__(self, name: str, folds: Sequence[Fold]) -> None:
        if not folds:
            raise ValueError("walk-forward needs at least one fold")
        self._name = name
        self._folds = sorted(folds, key=lambda f: f.start)

    @property
    def horizons(self) -> tuple[int, ...]:
        """The folds' horizons (every fold is fitted with the same settings)."""
        return self._folds[0].forecaster.horizons

    @property
    def version(self) -> str:
        """Names the walk-forward set."""
        return self._name

    def observe(self, bar: Bar) -> None:
        """Every fold sees every bar, so the one that takes over has its state ready."""
        for fold in self._folds:
            fold.forecaster.observe(bar)

    def predict(self, bars: Sequence[Bar], windows: npt.NDArray[np.floating[Any]]) -> FloatArray:
        """Each bar by its own fold (the batch of one instant always falls in one fold)."""
        fold = self._folds[0]
        for candidate in self._folds:
            if candidate.start <= bars[0].ts:
                fold = candidate
        return fold.forecaster.predict(bars, windows)
