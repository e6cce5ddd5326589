"""The naive reference pipeline: what a strategy written the usual way does on every bar.

For each symbol of a batch: numpy recomputes every indicator of the bundled feature set over the symbol's
last 200 bars (rolling windows as sliding views, no state kept between bars), takes the last `window`
rows, and runs the LSTM over that whole window, one symbol at a time. Strategy, risk and recording are
left out: the reference is only the two stages it is compared on, so the ratio flatters it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from bot.bars import Bar
from bot.config import FeatureSettings
from bot.model.predictor import Predictor

HISTORY = 200  # bars recomputed on every bar
Array = npt.NDArray[np.float64]


def _tail(x: Array, n: int) -> Array:
    return x[len(x) - n :]


def _rolling_mean(x: Array, w: int, n: int) -> Array:
    """Mean of each of the last n windows of w values."""
    return _tail(sliding_window_view(x, w).mean(axis=1), n)


def _rolling_std(x: Array, w: int, n: int, ddof: int) -> Array:
    return _tail(sliding_window_view(x, w).std(axis=1, ddof=ddof), n)


def features(bars: Sequence[Bar], settings: FeatureSettings, rows: int) -> Array:
    """The last `rows` feature rows of these bars, every column recomputed from the bars alone."""
    h, low, c, v = (np.array([getattr(b, f) for b in bars]) for f in ("high", "low", "close", "volume"))
    clip = settings.return_clip
    z, rsi_w, vol_w = settings.zscore_window, settings.rsi_window, settings.volatility_window
    cols: list[Array] = []
    log_c = np.log(c)
    for lag in settings.return_lags:
        cols.append(np.clip(_tail(log_c[lag:] - log_c[:-lag], rows), -clip, clip))
    for series in (c, np.log1p(v)):
        std = _rolling_std(series, z, rows, 1)
        diff = _tail(series, rows) - _rolling_mean(series, z, rows)
        cols.append(np.divide(diff, std, out=np.zeros(rows), where=std > 0))
    step = np.clip(np.diff(log_c), -clip, clip)
    gains = _rolling_mean(np.maximum(step, 0), rsi_w, rows)
    losses = _rolling_mean(np.maximum(-step, 0), rsi_w, rows)
    total = gains + losses
    cols.append(np.divide(gains, total, out=np.full(rows, 0.5), where=total > 0) * 2 - 1)
    cols.append(np.sqrt(_rolling_mean(step * step, vol_w, rows)))
    cols.append(np.clip(_tail(np.log(h / low), rows), 0, clip))
    span = h - low
    cols.append(_tail(np.divide(c - low, span, out=np.full(len(c), 0.5), where=span > 0) - 0.5, rows))
    extra = set(settings.extra)
    if "macd" in extra:
        fast, slow, signal = settings.macd_fast, settings.macd_slow, settings.macd_signal
        line = _rolling_mean(c, fast, rows + signal - 1) / _rolling_mean(c, slow, rows + signal - 1) - 1
        sig = sliding_window_view(line, signal).mean(axis=1)
        cols += [_tail(line, rows), sig, _tail(line, rows) - sig]
    if "bollinger" in extra:
        mean, std = _rolling_mean(c, z, rows), _rolling_std(c, z, rows, 0)
        cols += [np.divide(_tail(c, rows) - (mean - 2 * std), 4 * std, out=np.full(rows, 0.5), where=std > 0)]
        cols += [4 * std / mean]
    if "atr" in extra:
        prev = np.concatenate(([c[0]], c[:-1]))
        true_range = np.maximum(h, prev) - np.minimum(low, prev)
        cols.append(_rolling_mean(true_range, vol_w, rows) / _tail(c, rows))
    if "vwap" in extra:
        dollars = _rolling_mean((h + low + c) / 3 * v, z, rows)
        volume = _rolling_mean(v, z, rows)
        cols.append(
            np.log(_tail(c, rows) / np.divide(dollars, volume, out=_tail(c, rows).copy(), where=volume > 0))
        )
    if "obv" in extra:
        signed = np.sign(np.diff(c)) * v[1:]
        volume = _rolling_mean(v[1:], z, rows)
        cols.append(np.divide(_rolling_mean(signed, z, rows), volume, out=np.zeros(rows), where=volume > 0))
    if "time" in extra:
        ts = bars[len(bars) - rows :]
        seconds = np.array([b.ts.hour * 3600 + b.ts.minute * 60 for b in ts], dtype=np.float64)
        weekday = np.array([b.ts.weekday() for b in ts], dtype=np.float64)
        day, week = math.tau * seconds / 86_400, math.tau * weekday / 7
        cols += [np.sin(day), np.cos(day), np.sin(week), np.cos(week)]
    return np.column_stack(cols)


@dataclass(frozen=True)
class NaiveTimes:
    """Seconds one batch spent in each stage."""

    features: float
    inference: float

    @property
    def total(self) -> float:
        """Both stages."""
        return self.features + self.inference


def naive_batch(
    history: dict[str, list[Bar]], end: int, settings: FeatureSettings, predictor: Predictor
) -> NaiveTimes:
    """One batch of the naive pipeline: the bar at index `end` of every symbol in `history`."""
    window = predictor.card.window
    spent_features = spent_inference = 0.0
    for bars in history.values():
        started = time.perf_counter()
        rows = features(bars[end - HISTORY + 1 : end + 1], settings, window)
        middle = time.perf_counter()
        predictor.predict(rows[None, :, :])
        spent_features += middle - started
        spent_inference += time.perf_counter() - middle
    return NaiveTimes(spent_features, spent_inference)
