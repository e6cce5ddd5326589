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
    From there on it remembers rows older than the window; see bot/model/streaming.py for what that costs.

    The check is exact and costs one comparison of the batch's windows with the rows kept from the last
    ones: a ring of each symbol's last window_size - 1 rows, written twice over (at i and i + size) so that
    the rows to compare are one slice, and a view for every symbol at once when all moved on together.
    """

    def __init__(self, stream: StreamingPredictor) -> None:
        self.stream = stream
        self.restarts = 0
        self._history = _RowHistory(len(stream.symbols))

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
        windows = np.asarray(windows)
        out = np.empty((len(bars), len(self.horizons)))
        if not len(bars):
            return out
        symbols = [bar.symbol for bar in bars]
        going_on = self._history.take(self.stream.columns(symbols), windows)
        if going_on.all():
            return self.stream.step(symbols, windows[:, -1, :])
        for i in np.flatnonzero(~going_on).tolist():
            self.stream.reset(symbols[i])
            out[i] = self.stream.warm(symbols[i], np.asarray(windows[i], dtype=np.float64))[-1]
            self.restarts += 1
        on = np.flatnonzero(going_on)
        if len(on):
            out[on] = self.stream.step([symbols[i] for i in on], windows[on, -1, :])
        return out


class _RowHistory:
    """Each symbol's last window minus its oldest row, to tell whether the next window moves on by one row.

    rows[s, start : start + size] are symbol s's rows, oldest first, start = next[s] (a ring written twice).
    """

    def __init__(self, n_symbols: int) -> None:
        self._n = n_symbols
        self._rows: npt.NDArray[Any] | None = None  # (symbols, 2 * size, features), created on first use
        self._next: npt.NDArray[np.int64] = np.zeros(n_symbols, dtype=np.int64)
        self._known: npt.NDArray[np.bool_] = np.zeros(n_symbols, dtype=np.bool_)

    def take(self, idx: npt.NDArray[np.intp], windows: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
        """For windows[i] of symbol idx[i] (distinct): True where it is the last one kept for that symbol
        moved on by one row (values equal, as floats); then keep these windows."""
        batch, length, width = windows.shape
        size = length - 1
        rows = self._rows
        if rows is None or rows.shape[1:] != (2 * size, width):  # another window shape: nothing carries over
            rows = self._rows = np.zeros((self._n, 2 * size, width), dtype=windows.dtype)
            self._known[:] = False
        elif not np.can_cast(windows.dtype, rows.dtype):
            rows = self._rows = rows.astype(np.result_type(rows.dtype, windows.dtype))  # exact: wider floats
        start = self._next[idx]
        if size == 0:
            same = self._known[idx].copy()
        else:
            first = int(start[0])
            if (start == first).all():  # in step (the usual case): whole blocks, a view for every symbol
                every = batch == self._n and (idx == np.arange(batch)).all()
                kept = rows[:, first : first + size] if every else rows[idx, first : first + size]
            else:
                kept = rows[idx[:, None], start[:, None] + np.arange(size)]
            same = self._known[idx] & (windows[:, :-1] == kept).all(axis=(1, 2))
            # Keep: the newest row goes in at `start` (and start + size); the ring moves on by one.
            newest = windows[:, -1]
            rows[idx, start] = newest
            rows[idx, start + size] = newest
            self._next[idx] = (start + 1) % size
            restart = np.flatnonzero(~same)
            if len(restart):  # a window that did not continue: keep its own rows 1.. in full
                sym = idx[restart]
                slots = (self._next[sym, None] + np.arange(size)) % size
                tail = windows[restart, 1:]
                rows[sym[:, None], slots] = tail
                rows[sym[:, None], slots + size] = tail
        self._known[idx] = True
        return same


def model_forecaster(
    model: LoadedModel, symbols: Sequence[str], device: torch.device, inference: str
) -> ModelForecaster | StreamingForecaster:
    """The forecaster [strategies.model] inference names, for a loaded model."""
    if inference == "streaming":
        return StreamingForecaster(StreamingPredictor(model, symbols, device))
    return ModelForecaster(Predictor(model, device))
