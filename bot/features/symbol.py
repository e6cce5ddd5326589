"""One symbol's features, bar by bar: the reference path. Training builds its rows here (`feature_matrix`),
and the batch path (batch.py) that FeatureEngine runs for live trading gives the same rows, bit for bit."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeGuard

import numpy as np
import numpy.typing as npt

from bot.bars import Bar
from bot.config import FeatureSettings
from bot.features.indicators import (
    AverageTrueRange,
    BarIndicator,
    BollingerBands,
    CalendarEncoding,
    ClippedLogReturn,
    CloseLocation,
    CutlerRSI,
    FiniteMACD,
    LogRange,
    OnBalanceVolume,
    RealizedVolatility,
    RollingZScore,
    VWAPDistance,
)
from bot.features.outliers import GapOutlierDetector, Outlier

# Each optional feature group: its column names and its indicator, both from the settings. The order
# here is the column order (FeatureSettings.extra_choices() lists the same names in the same order).
_Columns = Callable[[FeatureSettings], tuple[str, ...]]
_Build = Callable[[FeatureSettings], BarIndicator]
_EXTRAS: dict[str, tuple[_Columns, _Build]] = {
    "macd": (
        lambda s: (f"macd_{s.macd_fast}_{s.macd_slow}", f"macd_signal_{s.macd_signal}", "macd_hist"),
        lambda s: FiniteMACD(s.macd_fast, s.macd_slow, s.macd_signal),
    ),
    "bollinger": (
        lambda s: (f"bb_pctb_{s.zscore_window}", f"bb_width_{s.zscore_window}"),
        lambda s: BollingerBands(s.zscore_window),
    ),
    "atr": (lambda s: (f"atr_{s.volatility_window}",), lambda s: AverageTrueRange(s.volatility_window)),
    "vwap": (lambda s: (f"vwap_dist_{s.zscore_window}",), lambda s: VWAPDistance(s.zscore_window)),
    "obv": (lambda s: (f"obv_chg_{s.zscore_window}",), lambda s: OnBalanceVolume(s.zscore_window)),
    "time": (lambda s: ("tod_sin", "tod_cos", "dow_sin", "dow_cos"), lambda s: CalendarEncoding()),
}


def _extras(settings: FeatureSettings) -> list[str]:
    """settings.extra in column order; ValueError naming an unknown or repeated name.

    FeatureSettings validates this already; checked again for settings built without validation.
    """
    for name in settings.extra:
        if name not in _EXTRAS:
            raise ValueError(f"unknown extra feature {name!r}; choose from {', '.join(_EXTRAS)}")
    if len(set(settings.extra)) != len(settings.extra):
        raise ValueError(f"extra features repeat: {settings.extra}")
    return [name for name in _EXTRAS if name in settings.extra]


def feature_names(settings: FeatureSettings) -> tuple[str, ...]:
    """The column names, in row order: the default set, then the `extra` groups in a fixed order.

    Windows and lags are part of the names so that a model card can be checked against the running
    config (return_clip and the outlier settings are not: compare the whole FeatureSettings for that).
    ValueError for an unknown extra name.
    """
    names = (
        *(f"ret_{lag}" for lag in settings.return_lags),
        f"z_close_{settings.zscore_window}",
        f"z_logvol_{settings.zscore_window}",
        f"rsi_{settings.rsi_window}",
        f"rvol_{settings.volatility_window}",
        "log_range",
        "close_loc",
    )
    return names + tuple(column for name in _extras(settings) for column in _EXTRAS[name][0](settings))


def _check_bar(bar: Bar, last_ts: datetime | None) -> None:
    # Checked before any indicator moves: a bar refused half-way would leave the indicators out of step
    # with one another, and the rows would stop being a function of the last `lookback` bars.
    values = (bar.open, bar.high, bar.low, bar.close, bar.volume)
    if not all(math.isfinite(x) for x in values):
        raise ValueError(f"{bar.symbol} {bar.ts.isoformat()}: NaN or infinite value in {values}")
    if bar.low <= 0 or bar.close <= 0 or bar.high < bar.low or bar.volume < 0:
        raise ValueError(
            f"{bar.symbol} {bar.ts.isoformat()}: need 0 < low <= high, close > 0, volume >= 0; got {values}"
        )
    if last_ts is not None and bar.ts <= last_ts:
        raise ValueError(
            f"{bar.symbol} {bar.ts.isoformat()}: not after the previous bar at {last_ts.isoformat()}"
        )


@dataclass(frozen=True, slots=True)
class FeatureHistory:
    """What a SymbolFeatures holds, as the recent values of each series its indicators keep, oldest first
    (prices as rescaled after outliers): enough to carry on from it elsewhere (BatchFeatures.load). A
    series an indicator of these settings does not keep is empty."""

    seen: int  # bars taken, counted up to lookback
    last_ts: datetime | None
    last_outlier: Outlier | None
    closes: list[float]
    log_volumes: list[float]
    returns: list[float]  # 1-bar returns, clipped, as RSI and volatility take them
    true_ranges: list[float]
    dollars: list[float]  # typical price times volume
    volumes: list[float]
    signed_volumes: list[float]
    lines: list[float]  # MACD lines
    detector_returns: list[float]  # the outlier detector's clipped returns of raw closes
    detector_prev_close: float | None


def _longest(*series: list[float]) -> list[float]:
    return max(series, key=len)


def _all_warm(row: tuple[float | None, ...]) -> TypeGuard[tuple[float, ...]]:
    return None not in row


class SymbolFeatures:
    """Every indicator for one symbol. `update(bar)` gives a row (in `feature_names` order) once all are
    warm, and each row is a pure function of the last `lookback` bars, bit for bit.

    With `outlier_k` set, a bar that jumps far beyond recent volatility (a split, see GapOutlierDetector)
    is recorded in `last_outlier`, and the stored price history is multiplied by its ratio open / previous
    close before the bar goes in, so price-based features continue as if the series were adjusted and the
    bar's gap return is 0. Volumes are not rescaled: the ratio is a price ratio, and a flagged bar may be
    a real gap rather than a split. The rule above still holds, bit for bit and across any number of
    outliers, because `lookback` then includes the bars that the outlier decisions inside it depend on.
    """

    __slots__ = (
        "_close_loc",
        "_detector",
        "_extras",
        "_last_outlier",
        "_last_ts",
        "_log_range",
        "_lookback",
        "_returns",
        "_rsi",
        "_rvol",
        "_seen",
        "_step",
        "_symbol",
        "_z_close",
        "_z_logvol",
    )

    def __init__(self, settings: FeatureSettings) -> None:
        limit = settings.return_clip
        self._returns = tuple(ClippedLogReturn(lag, limit) for lag in settings.return_lags)
        self._step = ClippedLogReturn(1, limit)  # the 1-bar return that RSI and volatility are fed
        self._z_close = RollingZScore(settings.zscore_window)
        self._z_logvol = RollingZScore(settings.zscore_window)
        self._rsi = CutlerRSI(settings.rsi_window)
        self._rvol = RealizedVolatility(settings.volatility_window)
        self._log_range = LogRange(limit)
        self._close_loc = CloseLocation()
        self._extras = tuple(_EXTRAS[name][1](settings) for name in _extras(settings))
        self._detector: GapOutlierDetector | None = None
        if settings.outlier_k is not None:
            self._detector = GapOutlierDetector(
                settings.volatility_window, settings.outlier_k, settings.outlier_floor, limit
            )
        self._symbol: str | None = None
        self._last_ts: datetime | None = None
        self._last_outlier: Outlier | None = None
        self._seen = 0  # bars taken, counted up to lookback only
        # An indicator needing b inputs, fed by one that is warm after a bars, gets its first input at
        # bar a and so is warm after a + b - 1 bars.
        lookback = max(
            *(r.lookback for r in self._returns),
            self._z_close.lookback,
            self._z_logvol.lookback,
            self._step.lookback + self._rsi.lookback - 1,
            self._step.lookback + self._rvol.lookback - 1,
            LogRange.lookback,
            CloseLocation.lookback,
            *(x.lookback for x in self._extras),
        )
        if self._detector is not None:
            # A row over bars a..t (a = t - lookback + 1) depends on the decisions for bars a+1..t (one at
            # bar a would only touch bars before a, and the return at a is in no window). The decision
            # for a+1 reads the detector's lookback of bars ending there, so the row needs
            # detector.lookback - 2 bars before a: from a cold start of this many bars, every decision
            # that matters is the one a long-running instance took.
            lookback += self._detector.lookback - 2
        self._lookback = lookback

    @property
    def lookback(self) -> int:
        """Bars needed before the first row; also how many bars each row depends on."""
        return self._lookback

    @property
    def symbol(self) -> str | None:
        """The symbol of the first bar seen; later bars must match it."""
        return self._symbol

    @property
    def last_ts(self) -> datetime | None:
        """The open time of the last bar taken; None before the first."""
        return self._last_ts

    @property
    def last_outlier(self) -> Outlier | None:
        """The latest bar flagged as an outlier (and adjusted for), None if none yet or `outlier_k` is
        unset. `last_outlier.ts == bar.ts` right after `update(bar)` means that very bar was flagged."""
        return self._last_outlier

    def history(self) -> FeatureHistory:
        """The values these indicators hold now (see FeatureHistory)."""
        closes = [list(r._closes) for r in (*self._returns, self._step)] + [self._z_close._moments.values()]
        extra: dict[str, list[float]] = {}
        for x in self._extras:
            if isinstance(x, FiniteMACD):
                closes += [x._fast.values(), x._slow.values()]
                extra["lines"] = x._lines.values()
            elif isinstance(x, BollingerBands):
                closes.append(x._moments.values())
            elif isinstance(x, AverageTrueRange):
                extra["true_ranges"] = x._ranges.values()
            elif isinstance(x, VWAPDistance):
                extra["dollars"] = x._dollars.values()
                extra["volumes"] = _longest(extra.get("volumes", []), x._volume.values())
            elif isinstance(x, OnBalanceVolume):
                extra["signed_volumes"] = x._signed.values()
                extra["volumes"] = _longest(extra.get("volumes", []), x._volume.values())
        detector = self._detector
        return FeatureHistory(
            seen=self._seen,
            last_ts=self._last_ts,
            last_outlier=self._last_outlier,
            closes=_longest(*closes),
            log_volumes=self._z_logvol._moments.values(),
            returns=_longest(self._rsi._net.values(), self._rvol._moments.values()),
            true_ranges=extra.get("true_ranges", []),
            dollars=extra.get("dollars", []),
            volumes=extra.get("volumes", []),
            signed_volumes=extra.get("signed_volumes", []),
            lines=extra.get("lines", []),
            detector_returns=[] if detector is None else detector._returns.values(),
            detector_prev_close=None if detector is None else detector._prev_close,
        )

    def update(self, bar: Bar) -> tuple[float, ...] | None:
        """Take the next bar; return its feature row, or None until `lookback` bars are in.

        ValueError, with no state changed, for a bad bar: another symbol, not strictly after the previous
        bar, non-finite values, prices <= 0, high < low or volume < 0.
        """
        if self._symbol is not None and bar.symbol != self._symbol:
            raise ValueError(f"these features are for {self._symbol}, got a bar for {bar.symbol}")
        _check_bar(bar, self._last_ts)
        self._symbol = bar.symbol
        self._last_ts = bar.ts

        if self._detector is not None:
            outlier = self._detector.update(bar)
            if outlier is not None:  # before the bar goes in: its own prices are the new scale
                self._last_outlier = outlier
                self._rescale(outlier.ratio)

        close = bar.close
        returns = [r.update(close) for r in self._returns]
        step = self._step.update(close)
        rsi = rvol = None
        if step is not None:
            rsi = self._rsi.update(step)
            rvol = self._rvol.update(step)
        z_close = self._z_close.update(close)
        z_logvol = self._z_logvol.update(math.log1p(bar.volume))
        log_range = self._log_range.update(bar)
        close_loc = self._close_loc.update(bar)
        row = (*returns, z_close, z_logvol, rsi, rvol, log_range, close_loc)
        extras = [x.update(bar) for x in self._extras]

        if self._seen < self._lookback:
            self._seen += 1
            if self._seen < self._lookback:
                return None
        if not _all_warm(row):
            return None
        full: tuple[float, ...] = row
        for values in extras:
            if values is None:
                return None
            full += values
        return full

    def _rescale(self, factor: float) -> None:
        """Multiply every stored price by `factor`; volumes, returns and ratios stay as they are."""
        for r in self._returns:
            r.rescale(factor)
        self._step.rescale(factor)
        self._z_close.rescale(factor)
        for x in self._extras:
            x.rescale(factor)


def feature_matrix(bars: Sequence[Bar], settings: FeatureSettings) -> tuple[npt.NDArray[np.float64], int]:
    """Run SymbolFeatures over one symbol's history: (rows, first), rows float64 of shape
    (len(bars) - first, n_features), where rows[i] belongs to bars[first + i].

    Indicators never go cold again once warm, so every bar from `first` on has a row. With too few bars,
    rows is empty and first == len(bars). Training uses this so that its features come from the same
    code as the live ones.
    """
    features = SymbolFeatures(settings)
    width = len(feature_names(settings))
    rows: list[tuple[float, ...]] = []
    first = len(bars)
    for i, bar in enumerate(bars):
        row = features.update(bar)
        if row is not None:
            if not rows:
                first = i
            rows.append(row)
    return np.array(rows, dtype=np.float64).reshape(len(rows), width), first
