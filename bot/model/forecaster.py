"""What the engine asks for a forecast. The LSTM predictor is one forecaster; evaluation baselines are others,
so a baseline is traded by exactly the same engine, risk checks and costs as the model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from bot.bars import Bar
from bot.model.predictor import Predictor

FloatArray = npt.NDArray[np.float64]


class Forecaster(Protocol):
    """Predicted next-bar return for each symbol whose bar just closed."""

    @property
    def version(self) -> str:
        """Names what produced the predictions (model version, baseline name)."""
        ...

    def observe(self, bar: Bar) -> None:
        """Every accepted bar, warm-up included, in time order (for forecasters that keep state)."""
        ...

    def predict(self, bars: Sequence[Bar], windows: npt.NDArray[np.floating[Any]]) -> FloatArray:
        """One value per bar; `windows` are the feature windows of those bars' symbols."""
        ...


class ModelForecaster:
    """The trained LSTM, one batched forward over the windows."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    @property
    def version(self) -> str:
        """The model card's version."""
        return self.predictor.card.version

    def observe(self, bar: Bar) -> None:
        """The window path keeps no state of its own: the feature windows are the state."""

    def predict(self, bars: Sequence[Bar], windows: npt.NDArray[np.floating[Any]]) -> FloatArray:
        """Batched LSTM forward."""
        return self.predictor.predict(windows)
