"""Small incremental indicators, O(1) per bar, each a pure function of a known, finite number of inputs.

Finite memory is a design rule, not an accident: an indicator with infinite memory (an EMA, Wilder's RSI)
gives a daemon warmed up on 50 bars different numbers from one that has run for a year, and the model
was trained on the latter. Every class here states `lookback`, the number of inputs its value depends
on, and its value after an update is exactly (bit for bit) determined by the last `lookback` inputs.

Indicators that keep price levels have `rescale(factor)`: when a split (or another one-bar outlier) is
detected, the stored history is multiplied by the detected ratio so that it reads as if the series had
been adjusted. The rescaled state is the one the rescaled inputs would have produced, so the rule above
still holds with "inputs" meaning the rescaled ones. Scale-free state (returns, ratios) is left alone.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Protocol

from bot.bars import Bar, utc
from bot.features.rolling import ExactRollingMoments, ExactRollingSum


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

    def rescale(self, factor: float) -> None:
        """Multiply the stored closes by `factor` (a split ratio); the next return then spans it as 0."""
        self._closes = deque((c * factor for c in self._closes), maxlen=self._lag + 1)


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

    def rescale(self, factor: float) -> None:
        """Multiply the stored inputs by `factor`: for a z-score of prices across a split."""
        self._moments.rescale(factor)


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


# --- optional indicators, selected by FeatureSettings.extra -------------------------------------------


class BarIndicator(Protocol):
    """An indicator fed whole bars, giving `width` values at once; what the optional features share."""

    @property
    def lookback(self) -> int:
        """Bars the values depend on: the first values come with bar number `lookback`."""
        ...

    @property
    def width(self) -> int:
        """How many values each update gives."""
        ...

    def update(self, bar: Bar) -> tuple[float, ...] | None:
        """Take the next bar; return `width` values, or None until warm."""
        ...

    def rescale(self, factor: float) -> None:
        """Multiply the stored price history by `factor` (a no-op for scale-free state)."""
        ...


class FiniteMACD:
    """MACD as a fraction of price, with finite memory: (line, signal, histogram).

    Appel's MACD is EMA12 - EMA26 with an EMA9 signal; EMAs never forget, so they are replaced by simple
    moving averages (the usual finite-window variant, exactly `slow + signal - 1` closes of memory), and
    the line is divided by the slow average, as in the Percentage Price Oscillator, so it is scale-free:

        line = SMA_fast / SMA_slow - 1,  signal = mean of the last `signal` lines,  hist = line - signal.

    line is computed from the two exact sums and rounded once; hist as line minus an exact mean, once.
    """

    __slots__ = ("_fast", "_lines", "_slow")

    width = 3

    def __init__(self, fast: int, slow: int, signal: int) -> None:
        if not 1 <= fast < slow:
            raise ValueError(f"MACD needs 1 <= fast < slow, got fast={fast}, slow={slow}")
        if signal < 1:
            raise ValueError(f"MACD signal window must be >= 1, got {signal}")
        self._fast = ExactRollingSum(fast)
        self._slow = ExactRollingSum(slow)
        self._lines = ExactRollingSum(signal)

    @property
    def lookback(self) -> int:
        """Closes the values depend on."""
        return self._slow.window + self._lines.window - 1

    def update(self, bar: Bar) -> tuple[float, float, float] | None:
        """Take the next bar (its close); return (line, signal, hist) or None until warm."""
        fast, slow = self._fast, self._slow
        fast.push(bar.close)
        slow.push(bar.close)
        if not slow.full:
            return None
        # (S_f / n_f) / (S_s / n_s) - 1 = (n_s S_f - n_f S_s) / (n_f S_s): exact integers, one rounding,
        # so the small difference of two large averages loses nothing to cancellation.
        line = (slow.window * fast.scaled_sum - fast.window * slow.scaled_sum) / (
            fast.window * slow.scaled_sum
        )
        self._lines.push(line)
        if not self._lines.full:
            return None
        return line, self._lines.mean(), self._lines.deviation(line)

    def rescale(self, factor: float) -> None:
        """Rescale the stored closes; the stored lines are ratios and need nothing."""
        self._fast.rescale(factor)
        self._slow.rescale(factor)


class BollingerBands:
    """Bollinger's %B and bandwidth over the last `window` closes, bands at mean +- 2 population stds.

    %B = (close - lower) / (upper - lower), 0.5 when the window is flat (no band to be placed in);
    bandwidth = (upper - lower) / mean. Both are scale-free. Bollinger uses the population std, and so
    do we. Note %B = 0.5 + z / 4 with z the population z-score: over the same window it says what
    z_close says (z_close uses the sample std and is clipped at +-5); it is here because it is the
    published form. Bandwidth, a volatility relative to price, is the new information.
    """

    __slots__ = ("_moments",)

    width = 2
    bands = 2.0  # standard deviations either side: Bollinger's own choice, fixed so names stay simple

    def __init__(self, window: int) -> None:
        if window < 2:
            raise ValueError(f"Bollinger window must be >= 2, got {window}")
        self._moments = ExactRollingMoments(window)

    @property
    def lookback(self) -> int:
        """Closes the values depend on."""
        return self._moments.window

    def update(self, bar: Bar) -> tuple[float, float] | None:
        """Take the next bar (its close); return (%B, bandwidth) or None until warm."""
        moments = self._moments
        moments.push(bar.close)
        if not moments.full:
            return None
        std = moments.std(ddof=0)
        if std == 0.0:  # exact variance, so exactly a flat window
            return 0.5, 0.0
        span = 2.0 * self.bands * std
        return 0.5 + moments.deviation(bar.close) / span, span / moments.mean()

    def rescale(self, factor: float) -> None:
        """Rescale the stored closes."""
        self._moments.rescale(factor)


class AverageTrueRange:
    """Mean true range over the last `window` bars, divided by the latest close (scale-free ATR).

    True range = max(high, previous close) - min(low, previous close), so overnight gaps count. Wilder
    smooths it exponentially; here it is a simple mean, for finite memory. Warm after window + 1 bars.
    """

    __slots__ = ("_prev_close", "_ranges")

    width = 1

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"ATR window must be >= 1, got {window}")
        self._ranges = ExactRollingSum(window)
        self._prev_close: float | None = None

    @property
    def lookback(self) -> int:
        """Bars the value depends on."""
        return self._ranges.window + 1

    def update(self, bar: Bar) -> tuple[float] | None:
        """Take the next bar; return (ATR / close,) or None until warm."""
        prev, self._prev_close = self._prev_close, bar.close
        if prev is None:
            return None
        self._ranges.push(max(bar.high, prev) - min(bar.low, prev))
        if not self._ranges.full:
            return None
        return (self._ranges.mean() / bar.close,)

    def rescale(self, factor: float) -> None:
        """Rescale the stored ranges and the previous close."""
        self._ranges.rescale(factor)
        if self._prev_close is not None:
            self._prev_close *= factor


class VWAPDistance:
    """log(close / VWAP), VWAP the volume-weighted mean of the typical price (high + low + close) / 3
    over the last `window` bars; 0 when the window traded no volume (no VWAP to be away from)."""

    __slots__ = ("_dollars", "_volume")

    width = 1

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"VWAP window must be >= 1, got {window}")
        self._dollars = ExactRollingSum(window)  # typical price * volume
        self._volume = ExactRollingSum(window)

    @property
    def lookback(self) -> int:
        """Bars the value depends on."""
        return self._volume.window

    def update(self, bar: Bar) -> tuple[float] | None:
        """Take the next bar; return (log distance from VWAP,) or None until warm."""
        self._dollars.push((bar.high + bar.low + bar.close) / 3.0 * bar.volume)
        self._volume.push(bar.volume)
        if not self._volume.full:
            return None
        volume = self._volume.scaled_sum
        if volume == 0:
            return (0.0,)
        return (math.log(bar.close / (self._dollars.scaled_sum / volume)),)

    def rescale(self, factor: float) -> None:
        """Rescale the stored price * volume; volumes are not prices and stay as they are."""
        self._dollars.rescale(factor)


class OnBalanceVolume:
    """Granville's on-balance volume, differenced over `window` bars and divided by the volume traded
    in them: sum(sign(close - previous close) * volume) / sum(volume), in [-1, 1].

    OBV itself is a running total from an arbitrary start (infinite memory); its change over a window is
    not, and dividing by the window's volume makes it comparable across symbols and years. 0 when the
    window traded nothing. Warm after window + 1 bars.
    """

    __slots__ = ("_prev_close", "_signed", "_volume")

    width = 1

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"OBV window must be >= 1, got {window}")
        self._signed = ExactRollingSum(window)
        self._volume = ExactRollingSum(window)
        self._prev_close: float | None = None

    @property
    def lookback(self) -> int:
        """Bars the value depends on."""
        return self._volume.window + 1

    def update(self, bar: Bar) -> tuple[float] | None:
        """Take the next bar; return (OBV change / volume,) or None until warm."""
        prev, self._prev_close = self._prev_close, bar.close
        if prev is None:
            return None
        volume = bar.volume
        self._signed.push(volume if bar.close > prev else -volume if bar.close < prev else 0.0)
        self._volume.push(volume)
        if not self._volume.full:
            return None
        total = self._volume.scaled_sum
        return (0.0 if total == 0 else self._signed.scaled_sum / total,)

    def rescale(self, factor: float) -> None:
        """Rescale the previous close, so a split bar is compared with the adjusted close before it."""
        if self._prev_close is not None:
            self._prev_close *= factor


class CalendarEncoding:
    """Time of day and day of week of the bar's open time in UTC, as points on two circles:
    (sin, cos) of 2 pi * seconds / 86400 and of 2 pi * weekday / 7 (Monday = 0).

    Only informative for intraday bars. In UTC a US session moves by an hour with daylight saving time;
    that is left in rather than converted to exchange time, which would need an exchange calendar: the
    shift is the same in training and live, and the model can learn it.
    """

    __slots__ = ()

    width = 4
    lookback = 1

    def update(self, bar: Bar) -> tuple[float, float, float, float]:
        """Take a bar; return (tod_sin, tod_cos, dow_sin, dow_cos)."""
        ts = utc(bar.ts)
        seconds = ts.hour * 3600 + ts.minute * 60 + ts.second + ts.microsecond / 1e6
        day = math.tau * seconds / 86_400.0
        week = math.tau * ts.weekday() / 7.0
        return math.sin(day), math.cos(day), math.sin(week), math.cos(week)

    def rescale(self, factor: float) -> None:
        """Nothing to rescale."""
