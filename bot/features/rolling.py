"""Exact rolling sums and moments: the value after a push depends only on the window, bit for bit.

A float running sum drifts: after a million pushes and pops it carries rounding from values that left
the window long ago, so a daemon restarted from a short warm-up computes slightly different features
than one that ran for a year. Here the running sums are exact integers, so there is nothing to drift.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

# Every finite double is n / 2**k with 0 <= k <= 1074, so x * 2**_SCALE is an exact integer for all of
# them; x * x then lives exactly at scale 2**(2 * _SCALE).
_SCALE = 1100


def _scaled(x: float) -> int:
    """x * 2**_SCALE as an exact int (x finite)."""
    numerator, denominator = x.as_integer_ratio()
    # denominator is a power of two, 2**k with k <= 1074 < _SCALE, so the shift is never negative.
    return numerator << (_SCALE - (denominator.bit_length() - 1))


def _unscaled(scaled: int) -> float:
    """The float that `_scaled` turned into `scaled`: exact, since int / int rounds correctly."""
    return scaled / (1 << _SCALE)


def _rescaled(values: list[float], factor: float) -> list[float]:
    """Each value times `factor`, as one float product each; ValueError unless all stay finite.

    Checked before anything is replaced, so a failed rescale leaves the window as it was.
    """
    out = [x * factor for x in values]
    if not all(math.isfinite(x) for x in out):
        raise ValueError(f"rescaling by {factor!r} leaves the float range")
    return out


class _ExactWindow:
    """What both exact rolling statistics share: the window and the scaled values inside it."""

    __slots__ = ("_values", "_window")
    _values: deque[Any]

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._window = window

    @property
    def window(self) -> int:
        """The most values the statistics cover."""
        return self._window

    @property
    def count(self) -> int:
        """How many values the statistics cover now: min(pushes, window)."""
        return len(self._values)

    @property
    def full(self) -> bool:
        """True once `window` values have been pushed."""
        return len(self._values) == self._window


class ExactRollingSum(_ExactWindow):
    """Rolling sum and mean over the last `window` pushed values, exact, O(1) per push.

    ExactRollingMoments without the squares, for the many indicators that need only a sum: the running
    sum is an exact integer in the same dyadic scale, so the sum after a push is a pure function of the
    values in the window, bit for bit.
    """

    __slots__ = ("_s1",)

    def __init__(self, window: int) -> None:
        super().__init__(window)
        self._values = deque()  # each x * 2**_SCALE
        self._s1 = 0

    @property
    def scaled_sum(self) -> int:
        """The exact sum times 2**SCALE, for callers that combine sums exactly and round once
        (a ratio of two of these is the ratio of the sums, correctly rounded)."""
        return self._s1

    def push(self, x: float) -> None:
        """Add `x`, dropping the oldest value when the window is full. ValueError on NaN or infinity."""
        if not math.isfinite(x):
            raise ValueError(f"ExactRollingSum takes finite values only, got {x!r}")
        scaled = _scaled(x)
        if len(self._values) == self._window:
            self._s1 -= self._values.popleft()
        self._values.append(scaled)
        self._s1 += scaled

    def sum(self) -> float:
        """The correctly rounded sum of the window (0.0 when empty). OverflowError beyond float range."""
        return self._s1 / (1 << _SCALE)

    def mean(self) -> float:
        """The correctly rounded mean of the window. ValueError when empty."""
        n = len(self._values)
        if n == 0:
            raise ValueError("need at least 1 value in the window, have 0")
        return self._s1 / (n << _SCALE)

    def deviation(self, x: float) -> float:
        """x - mean(), correctly rounded (one rounding, so no cancellation error). ValueError when empty."""
        n = len(self._values)
        if n == 0:
            raise ValueError("need at least 1 value in the window, have 0")
        return (n * _scaled(x) - self._s1) / (n << _SCALE)

    def values(self) -> list[float]:
        """The values in the window, oldest first."""
        return [_unscaled(v) for v in self._values]

    def rescale(self, factor: float) -> None:
        """Replace every value x in the window by the float product x * factor and resum exactly.

        The result is the state that pushing the rescaled values would give, so it is still a pure
        function of the (rescaled) window. O(window); for rare events such as a split, not per bar.
        ValueError, with nothing changed, if a product is not finite.
        """
        new = [_scaled(x) for x in _rescaled(self.values(), factor)]
        self._values = deque(new)
        self._s1 = sum(new)


class ExactRollingMoments(_ExactWindow):
    """Rolling sum, mean and sample variance over the last `window` pushed values, O(1) per push.

    The running sum and sum of squares are exact Python ints in a fixed dyadic scale, so pushing and
    popping add and subtract exact integers; each statistic is rounded once (twice for `std`) when read.
    Consequence: every statistic is a pure function of the values in the window, whatever came before.
    """

    __slots__ = ("_s1", "_s2")

    def __init__(self, window: int) -> None:
        super().__init__(window)
        self._values = deque()  # (x, x*x), both scaled
        self._s1 = 0  # sum of x * 2**_SCALE
        self._s2 = 0  # sum of x*x * 2**(2*_SCALE)

    def push(self, x: float) -> None:
        """Add `x`, dropping the oldest value when the window is full. ValueError on NaN or infinity."""
        if not math.isfinite(x):
            raise ValueError(f"ExactRollingMoments takes finite values only, got {x!r}")
        numerator, denominator = x.as_integer_ratio()
        shift = _SCALE - (denominator.bit_length() - 1)
        scaled = numerator << shift
        # Square the small numerator, then shift: far cheaper than squaring the ~1100-bit scaled value.
        squared = (numerator * numerator) << (2 * shift)
        if len(self._values) == self._window:
            old, old_squared = self._values.popleft()
            self._s1 -= old
            self._s2 -= old_squared
        self._values.append((scaled, squared))
        self._s1 += scaled
        self._s2 += squared

    def sum(self) -> float:
        """The correctly rounded sum of the window (0.0 when empty). OverflowError beyond float range."""
        return self._s1 / (1 << _SCALE)

    def mean(self) -> float:
        """The correctly rounded mean of the window. ValueError when empty."""
        n = self._need(1)
        return self._s1 / (n << _SCALE)

    def mean_square(self) -> float:
        """The correctly rounded mean of x*x over the window (second raw moment). ValueError when empty."""
        n = self._need(1)
        return self._s2 / (n << (2 * _SCALE))

    def variance(self, ddof: int = 1) -> float:
        """The correctly rounded variance with an n - ddof denominator: ddof=1 (default) the sample
        variance, ddof=0 the population variance. ValueError with fewer than ddof + 1 values."""
        if ddof not in (0, 1):
            raise ValueError(f"ddof must be 0 or 1, got {ddof}")
        n = self._need(ddof + 1)
        # n*S2 - S1**2 is exact and never negative, so there is no cancellation to guard against.
        return (n * self._s2 - self._s1 * self._s1) / ((n * (n - ddof)) << (2 * _SCALE))

    def std(self, ddof: int = 1) -> float:
        """sqrt(variance(ddof)): by default the sample standard deviation."""
        return math.sqrt(self.variance(ddof))

    def deviation(self, x: float) -> float:
        """x - mean(), correctly rounded (one rounding, so no cancellation error). ValueError when empty."""
        n = self._need(1)
        return (n * _scaled(x) - self._s1) / (n << _SCALE)

    def values(self) -> list[float]:
        """The values in the window, oldest first."""
        return [_unscaled(scaled) for scaled, _ in self._values]

    def rescale(self, factor: float) -> None:
        """Replace every value x in the window by the float product x * factor and recompute the sums.

        The result is the state that pushing the rescaled values would give, so every statistic stays a
        pure function of the (rescaled) window. O(window); meant for rare events such as a split.
        ValueError, with nothing changed, if a product is not finite.
        """
        rescaled = _rescaled(self.values(), factor)
        self._values.clear()
        self._s1 = self._s2 = 0
        for x in rescaled:
            self.push(x)

    def _need(self, least: int) -> int:
        n = len(self._values)
        if n < least:
            raise ValueError(f"need at least {least} value(s) in the window, have {n}")
        return n
