"""One-bar outliers, splits above all: a jump far beyond recent volatility, detected from raw prices.

The bundled equity data are not split-adjusted, so AAPL's 7:1 split reads as a -86% hour. The detector
flags such bars; SymbolFeatures then rescales its stored price history by the detected ratio, so that
every price-based indicator carries on as if the series had been adjusted.

Finite memory again: a decision depends only on the bar and the `window` + 1 bars before it (raw closes,
never rescaled ones, and never earlier decisions), so it is the same in a daemon that has run for a year
and in one warmed up on a short history.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from bot.bars import Bar
from bot.features.indicators import clip
from bot.features.rolling import ExactRollingMoments


@dataclass(frozen=True, slots=True)
class Outlier:
    """A flagged bar. `ratio` (= exp(gap)) is the factor the stored price history was multiplied by."""

    symbol: str
    ts: datetime
    ratio: float  # open / previous close
    gap: float  # log(open / previous close)
    move: float  # log(close / previous close)
    threshold: float  # what |gap| and |move| both exceeded, in log terms


class GapOutlierDetector:
    """Flags bar t when it opens AND closes beyond the threshold, on the same side, from the previous close:

        |log(open_t / close_{t-1})| > T,  |log(close_t / close_{t-1})| > T,  same sign,
        T = max(floor, k * std of the last `window` close-to-close log returns before t, each clipped).

    The open gap is the test (a split shows first at the open); the close must confirm it, because a
    lone bad print of the open is not a change of scale: IBM's bar of 2002-12-23 14:00 in the bundled
    data opens at 159.58 after a close of 79.82 and closes at 80.11. Rescaling the history by 2 there
    would invent a -69% hour instead of removing one.

    The std is over raw returns, clipped to +-`return_clip` so that one split in the window cannot raise
    T for long; adjusted returns would make each decision depend on the previous ones, without end. No
    decision is taken until `window` returns are in (the first `window` + 1 bars are never flagged).
    """

    __slots__ = ("_floor", "_k", "_limit", "_prev_close", "_returns")

    def __init__(self, window: int, k: float, floor: float, return_clip: float) -> None:
        if window < 2:
            raise ValueError(f"outlier window must be >= 2, got {window}")
        if not k > 0 or not floor > 0 or not return_clip > 0:
            raise ValueError(f"need k, floor and return_clip > 0, got {k}, {floor}, {return_clip}")
        self._returns = ExactRollingMoments(window)
        self._k = k
        self._floor = floor
        self._limit = return_clip
        self._prev_close: float | None = None

    @property
    def lookback(self) -> int:
        """Bars a decision depends on: the bar itself and the `window` + 1 before it."""
        return self._returns.window + 2

    def update(self, bar: Bar) -> Outlier | None:
        """Take the next bar (prices > 0); return an Outlier if it is one, else None."""
        prev, self._prev_close = self._prev_close, bar.close
        if prev is None:
            return None
        outlier = None
        gap = math.log(bar.open / prev)
        # T >= floor, so the std (an exact big-integer division) is only needed for the rare large gap.
        if abs(gap) > self._floor and self._returns.full and math.isfinite(gap):
            threshold = max(self._floor, self._k * self._returns.std())
            move = math.log(bar.close / prev)
            if abs(gap) > threshold and abs(move) > threshold and (gap > 0) == (move > 0):
                outlier = Outlier(bar.symbol, bar.ts, bar.open / prev, gap, move, threshold)
        self._returns.push(clip(math.log(bar.close / prev), -self._limit, self._limit))
        return outlier
