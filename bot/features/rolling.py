"""Exact rolling sums and moments: the value after a push depends only on the window, bit for bit.

A float running sum drifts: after a million pushes and pops it carries rounding from values that left
the window long ago, so a daemon restarted from a short warm-up computes slightly different features
than one that ran for a year. Here the running sums are exact integers, so there is nothing to drift.
"""

from __future__ import annotations

import math
from collections import deque

# Every finite double is n / 2**k with 0 <= k <= 1074, so x * 2**_SCALE is an exact integer for all of
# them; x * x then lives exactly at scale 2**(2 * _SCALE).
_SCALE = 1100


def _scaled(x: float) -> int:
    """x * 2**_SCALE as an exact int (x finite)."""
    numerator, denominator = x.as_integer_ratio()
    # denominator is a power of two, 2**k with k <= 1074 < _SCALE, so the shift is never negative.
    return numerator << (_SCALE - (denominator.bit_length() - 1))


class ExactRollingMoments:
    """Rolling sum, mean and sample variance over the last `window` pushed values, O(1) per push.

    The running sum and sum of squares are exact Python ints in a fixed dyadic scale, so pushing and
    popping add and subtract exact integers; each statistic is rounded once (twice for `std`) when read.
    Consequence: every statistic is a pure function of the values in the window, whatever came before.
    """

    __slots__ = ("_s1", "_s2", "_values", "_window")

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._window = window
        self._values: deque[tuple[int, int]] = deque()  # (x, x*x), both scaled
        self._s1 = 0  # sum of x * 2**_SCALE
        self._s2 = 0  # sum of x*x * 2**(2*_SCALE)

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

    def variance(self) -> float:
        """The correctly rounded sample variance (n - 1 denominator). ValueError with fewer than 2 values."""
        n = self._need(2)
        # n*S2 - S1**2 is exact and never negative, so there is no cancellation to guard against.
        return (n * self._s2 - self._s1 * self._s1) / ((n * (n - 1)) << (2 * _SCALE))

    def std(self) -> float:
        """sqrt(variance()): the sample standard deviation. ValueError with fewer than 2 values."""
        return math.sqrt(self.variance())

    def _need(self, least: int) -> int:
        n = len(self._values)
        if n < least:
            raise ValueError(f"need at least {least} value(s) in the window, have {n}")
        return n
