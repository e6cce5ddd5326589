"""Small incremental indicators, O(1) per bar, each a pure function of a known, finite number of inputs.

Finite memory is a design rule, not an accident: an indicator with infinite memory (an EMA, Wilder's RSI)
gives a daemon warmed up on 50 bars different numbers from one that has run for a year, and the model
was trained on the latter. Every class here states `lookback`, the number of inputs its value depends
on, and its value after an update is exactly (bit for bit) determined by the last `lookback` inputs.
"""

from __future__ import annotations

import math
from collections import deque

from bot.bars import Bar
from bot.features.rolling import ExactRollingMoments


def clip(x: float, low: float, high: float) -> float:
    """x limited to [low, high]."""
    return low if x < low else high if x > high else x


class ClippedLogReturn:
    """ln(close_t / close_{t-lag}) clipped to +-`limit`; fed closes, warm after lag + 1 of them.

    The clip exists because the data are not split-adjusted: a 7:1 split reads as a -1.95 log return,
    which would dominate every window it sits in. Proper split handling comes later.
    """

    __slots__ = ("_closes", "_lag", "_limit", "_value")

    def __init__(self, lag: int, limit: float) -> None:
        if lag < 1:
            raise ValueError(f"lag must be >= 1, got {lag}")
        if not limit > 0:
            raise ValueError(f"clip limit must be > 0, got {limit}")
        self._lag = lag
        self._limit = limit
        self._closes: deque[float] = deque(maxlen=lag + 1)
        self._value: float | None = None

    @property
    def lookback(self) -> int:
        """Closes the value depends on."""
        return self._lag + 1

    @property
    def value(self) -> float | None:
        """The latest clipped return, None until warm."""
        return self._value

    def update(self, close: float) -> float | None:
        """Take the next close (> 0); return the clipped return or None until warm."""
        self._closes.append(close)
        if len(self._closes) > self._lag:
            self._value = clip(math.log(close / self._closes[0]), -self._limit, self._limit)
        return self._value


class RollingZScore:
    """(x - mean) / std over the last `window` inputs (sample std), 0 when std == 0, clipped to +-`limit`."""

    __slots__ = ("_limit", "_moments", "_value")

    def __init__(self, window: int, limit: float = 5.0) -> None:
        if window < 2:
            raise ValueError(f"z-score window must be >= 2, got {window}")
        self._moments = ExactRollingMoments(window)
        self._limit = limit
        self._value: float | None = None

    @property
    def lookback(self) -> int:
        """Inputs the value depends on."""
        return self._moments.window

    @property
    def value(self) -> float | None:
        """The latest z-score, None until warm."""
        return self._value

    def update(self, x: float) -> float | None:
        """Take the next value; return its z-score within the window, or None until warm."""
        self._moments.push(x)
        if self._moments.full:
            std = self._moments.std()
            # std == 0 happens exactly when the window is constant (the variance is exact), e.g. a halted
            # symbol; 0 says "at the mean" instead of dividing by zero.
            z = 0.0 if std == 0.0 else (x - self._moments.mean()) / std
            self._value = clip(z, -self._limit, self._limit)
        return self._value


class CutlerRSI:
    """RSI with simple averages of gains and losses (Cutler's), rescaled to [-1, 1] as (rsi - 50) / 50.

    Fed 1-bar returns. Wilder's version smooths exponentially and so never forgets; Cutler's has a
    memory of exactly `window` returns. With G and L the summed gains and losses,
    (rsi - 50) / 50 = (G - L) / (G + L) = sum(r) / sum(|r|), which is what is computed: two exact sums,
    no cancellation. 0 when nothing moved in the window.
    """

    __slots__ = ("_abs", "_net", "_value")

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"RSI window must be >= 1, got {window}")
        self._net = ExactRollingMoments(window)
        self._abs = ExactRollingMoments(window)
        self._value: float | None = None

    @property
    def lookback(self) -> int:
        """Returns the value depends on."""
        return self._net.window

    @property
    def value(self) -> float | None:
        """The latest rescaled RSI in [-1, 1], None until warm."""
        return self._value

    def update(self, ret: float) -> float | None:
        """Take the next 1-bar return; return the rescaled RSI or None until warm."""
        self._net.push(ret)
        self._abs.push(abs(ret))
        if self._net.full:
            moved = self._abs.sum()
            self._value = 0.0 if moved == 0.0 else self._net.sum() / moved
        return self._value


class RealizedVolatility:
    """sqrt(mean(r**2)) over the last `window` 1-bar returns (no demeaning: hourly means are noise)."""

    __slots__ = ("_moments", "_value")

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"volatility window must be >= 1, got {window}")
        self._moments = ExactRollingMoments(window)
        self._value: float | None = None

    @property
    def lookback(self) -> int:
        """Returns the value depends on."""
        return self._moments.window

    @property
    def value(self) -> float | None:
        """The latest realized volatility per bar, None until warm."""
        return self._value

    def update(self, ret: float) -> float | None:
        """Take the next 1-bar return; return the realized volatility or None until warm."""
        self._moments.push(ret)
        if self._moments.full:
            self._value = math.sqrt(self._moments.mean_square())
        return self._value


class LogRange:
    """log(high / low) of one bar, clipped to [0, `limit`]: the bar's own volatility."""

    __slots__ = ("_limit", "_value")

    lookback = 1

    def __init__(self, limit: float) -> None:
        if not limit > 0:
            raise ValueError(f"clip limit must be > 0, got {limit}")
        self._limit = limit
        self._value: float | None = None

    @property
    def value(self) -> float | None:
        """The latest value, None before the first bar."""
        return self._value

    def update(self, bar: Bar) -> float:
        """Take a bar (prices > 0); return its clipped log range."""
        self._value = clip(math.log(bar.high / bar.low), 0.0, self._limit)
        return self._value


class CloseLocation:
    """Where the close sits in its bar: (close - low) / (high - low) - 0.5, in [-0.5, 0.5]; 0 if flat."""

    __slots__ = ("_value",)

    lookback = 1

    def __init__(self) -> None:
        self._value: float | None = None

    @property
    def value(self) -> float | None:
        """The latest value, None before the first bar."""
        return self._value

    def update(self, bar: Bar) -> float:
        """Take a bar; return its close location."""
        span = bar.high - bar.low
        # Clipped because vendors round: BarGuard lets open/close sit a hair outside [low, high].
        self._value = 0.0 if span <= 0.0 else clip((bar.close - bar.low) / span - 0.5, -0.5, 0.5)
        return self._value
