"""What the engine asks for a forecast. The LSTM predictor is one forecaster; evaluation baselines are others,
so a baseline is traded by exactly the same engine, risk checks and costs as the model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch

from bot.bars import Bar
from bot.model.predictor import Predictor
from bot.model.registry import LoadedModel
from bot.model.streaming import StreamingPredictor

FloatArray = npt.NDArray[np.float64]


class Forecaster(Protocol):
    """Predicted returns, one column per horizon (the first is the next bar), for each symbol whose bar
    just closed."""

    @property
    def horizons(self) -> tuple[int, ...]:
        """Bars ahead of each prediction column, ascending; the first is 1."""
        ...

    @property
    def version(self) -> str:
        """Names what produced the predictions (model version, baseline name)."""
        ...

    def observe(self, bar: Bar) -> None:
        """Every accepted bar, warm-up included, in time order (for forecasters that keep state)."""
        ...

    def predict(self, bars: Sequence[Bar], windows: npt.NDArray[np.floating[Any]]) -> FloatArray:
        """(bars, horizons); `windows` are the feature windows of those bars' symbols."""
        ...


class ModelForecaster:
    """The trained LSTM, one batched forward over the windows."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    @property
    def horizons(self) -> tuple[int, ...]:
        """The card's horizons."""
        return self.predictor.horizons

    @property
    def version(self) -> str:
        """The model card's version."""
        return self.predictor.card.version

    def observe(self, bar: Bar) -> None:
        """The window path keeps no state of its own: the feature windows are the state."""

    def predict(self, bars: Sequence[Bar], windows: npt.NDArray[np.floating[Any]]) -> FloatArray:
        """Batched LSTM forward."""
        return self.predictor.predict(windows, [b.symbol for b in bars])


class StreamingForecaster:
    """The LSTM advanced by one step per bar, (h, c) carried per symbol ([strategies.model] inference =
    "streaming").

    The stream goes on only while the window it is handed is the previous one moved on by exactly one row.
    Anything else (a symbol's first decision, a restart, a split that rescaled the feature history) restarts
    that symbol's stream from the window itself, so the first prediction after it equals the window path's.
    From there on it remembers rows older than the window; see bot/model/streaming.py for what that costs."""

    def __init__(self, stream: StreamingPredictor) -> None:
        self.stream = stream
        self.restarts = 0
        self._last: dict[str, FloatArray] = {}

    @property
    def horizons(self) -> tuple[int, ...]:
        """The card's horizons."""
        return tuple(self.stream.card.horizons)

    @property
    def version(self) -> str:
        """The model card's version."""
        return self.stream.card.version

    def observe(self, bar: Bar) -> None:
        """State moves only with the feature rows handed to `predict`."""

    def predict(self, bars: Sequence[Bar], windows: npt.NDArray[np.floating[Any]]) -> FloatArray:
        """One LSTM step for symbols whose stream continues; a warm restart from the window for the rest."""
        rows = np.asarray(windows, dtype=np.float64)
        out = np.empty((len(bars), len(self.horizons)))
        going_on = []
        for i, bar in enumerate(bars):
            last = self._last.get(bar.symbol)
            if last is not None and np.array_equal(last[1:], rows[i, :-1]):
                going_on.append(i)
            else:
                self.stream.reset(bar.symbol)
                out[i] = self.stream.warm(bar.symbol, rows[i])[-1]
                self.restarts += 1
            self._last[bar.symbol] = rows[i]
        if going_on:
            out[going_on] = self.stream.step([bars[i].symbol for i in going_on], rows[going_on, -1, :])
        return out


def model_forecaster(
    model: LoadedModel, symbols: Sequence[str], device: torch.device, inference: str
) -> ModelForecaster | StreamingForecaster:
    """The forecaster [strategies.model] inference names, for a loaded model."""
    if inference == "streaming":
        return StreamingForecaster(StreamingPredictor(model, symbols, device))
    return ModelForecaster(Predictor(model, device))
