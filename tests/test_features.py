"""The feature stage: incremental values match batch references, memory is finite, nothing looks ahead,
and splits are adjusted for when outlier handling is on."""

from __future__ import annotations

import csv
import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from bot.bars import Bar
from bot.config import FeatureSettings, parse_config
from bot.errors import ConfigError
from bot.features import FeatureEngine, Outlier, SymbolFeatures, feature_matrix, feature_names
from bot.features.indicators import CalendarEncoding
from bot.features.outliers import GapOutlierDetector
from bot.features.rolling import ExactRollingMoments, ExactRollingSum

DATA = Path(__file__).resolve().parent.parent / "data" / "equities-1h"
DEFAULT = FeatureSettings()
# Unequal, non-default parameters catch a window or lag wired to the wrong indicator.
ODD = FeatureSettings(
    return_lags=[24, 1, 3], zscore_window=7, rsi_window=30, volatility_window=5, return_clip=0.05
)
EXTRAS = ["time", "obv", "vwap", "atr", "bollinger", "macd"]  # any order: columns come in one order
ALL = FeatureSettings(extra=EXTRAS)
ODD_ALL = ODD.model_copy(update={"extra": ALL.extra, "macd_fast": 5, "macd_slow": 13, "macd_signal": 4})
ALL_OUT = ALL.model_copy(update={"outlier_k": 10.0})
ODD_ALL_OUT = ODD_ALL.model_copy(update={"outlier_k": 10.0})
DEFAULT_OUT = FeatureSettings(outlier_k=10.0)
SPLIT = datetime(2005, 2, 28, 14, tzinfo=UTC)  # first bar after AAPL's 2:1 split (88.97 -> 44.56)
# Every bar the detector flags in the bundled data with the default k = 10 and floor 0.25: AAPL's four
# splits, AAPL's real crash of 2000-09-29 (-47% at the open on a profit warning: a bigger move relative
# to recent volatility than the 2000 split, so no k separates them), and IBM's 2:1 split of 1999.
AAPL_SPLITS = ("2000-06-21T13", "2005-02-28T14", "2014-06-09T13", "2020-08-31T13")
AAPL_CRASH = "2000-09-29T13"
IBM_SPLIT = "1999-05-27T13"

Array = npt.NDArray[np.float64]


def load_bars(symbol: str) -> list[Bar]:
    with (DATA / f"{symbol}.csv").open(newline="") as handle:
        reader = csv.reader(handle)
        assert next(reader) == ["timestamp", "open", "high", "low", "close", "volume"]
        return [
            Bar(symbol, datetime.fromisoformat(ts), float(o), float(h), float(lo), float(c), float(v))
            for ts, o, h, lo, c, v in reader
        ]


@pytest.fixture(scope="module")
def aapl() -> list[Bar]:
    return load_bars("AAPL")


@pytest.fixture(scope="module")
def spy() -> list[Bar]:
    return load_bars("SPY")


@pytest.fixture(scope="module")
def aapl_span(aapl: list[Bar]) -> list[Bar]:
    """Three years of AAPL with the 2005 split in the middle."""
    lo, hi = datetime(2003, 7, 1, tzinfo=UTC), datetime(2006, 7, 1, tzinfo=UTC)
    span = [b for b in aapl if lo <= b.ts < hi]
    assert len(span) >= 3000
    assert any(b.ts == SPLIT for b in span)
    return span


@pytest.fixture(scope="module")
def aapl_full(aapl: list[Bar]) -> tuple[Array, int]:
    return feature_matrix(aapl, DEFAULT)


@pytest.fixture(scope="module")
def aapl_span_out(aapl_span: list[Bar]) -> Run:
    return run(aapl_span, ALL_OUT)


@pytest.fixture(scope="module")
def aapl_events(aapl: list[Bar]) -> list[tuple[list[Bar], Run]]:
    """AAPL around its other outliers (2000 split and crash, 2014 and 2020 splits), each span run with
    every extra feature and outlier handling on. (The 2005 split is in aapl_span.)"""
    spans = [(datetime(2000, 5, 1), datetime(2000, 11, 1)), (datetime(2014, 4, 1), datetime(2014, 8, 1)),
             (datetime(2020, 7, 1), datetime(2020, 11, 1))]  # fmt: skip
    out = []
    for lo, hi in spans:
        bars = [b for b in aapl if lo.replace(tzinfo=UTC) <= b.ts < hi.replace(tzinfo=UTC)]
        out.append((bars, run(bars, ALL_OUT)))
    return out


@dataclass(frozen=True)
class Run:
    """What SymbolFeatures gave over a series: rows and first (as feature_matrix), and the outliers."""

    rows: Array
    first: int
    flagged: list[int]  # bar indices
    outliers: list[Outlier]


def run(bars: Sequence[Bar], settings: FeatureSettings) -> Run:
    features = SymbolFeatures(settings)
    rows: list[tuple[float, ...]] = []
    first = len(bars)
    flagged: list[int] = []
    outliers: list[Outlier] = []
    for i, bar in enumerate(bars):
        row = features.update(bar)
        outlier = features.last_outlier
        if outlier is not None and outlier.ts == bar.ts:
            flagged.append(i)
            outliers.append(outlier)
        if row is not None:
            first = min(first, i)
            rows.append(row)
    width = len(feature_names(settings))
    return Run(np.array(rows, dtype=np.float64).reshape(len(rows), width), first, flagged, outliers)


def hours(bars: Sequence[Bar], indices: Sequence[int]) -> list[str]:
    return [bars[i].ts.strftime("%Y-%m-%dT%H") for i in indices]


def bits(a: npt.NDArray[np.floating]) -> bytes:
    """Raw bytes: equality means bit-identical, -0.0 and NaN payloads included."""
    return np.ascontiguousarray(a).tobytes()


# --- batch references, numpy over the whole series ---------------------------------------------------


@dataclass(frozen=True)
class Series:
    """A bar series as numpy columns."""

    bars: Sequence[Bar]
    o: Array
    h: Array
    lo: Array
    c: Array
    v: Array

    @classmethod
    def of(cls, bars: Sequence[Bar]) -> Series:
        n = len(bars)
        o, h, lo, c, v = (
            np.fromiter((getattr(b, name) for b in bars), np.float64, n)
            for name in ("open", "high", "low", "close", "volume")
        )
        return cls(bars, o, h, lo, c, v)

    @property
    def ts(self) -> npt.NDArray[np.datetime64]:
        """Open times in UTC, as naive datetime64."""
        naive = [b.ts.astimezone(UTC).replace(tzinfo=None) for b in self.bars]
        return np.array(naive, dtype="datetime64[us]")

    def adjusted(self, flagged: Sequence[int]) -> Series:
        """Prices multiplied by every later flagged bar's ratio open / previous close (a backward split
        adjustment, as vendors do it); volumes as they are."""
        factor = np.ones(len(self.c))
        for i in flagged:
            factor[:i] *= self.o[i] / self.c[i - 1]
        return Series(self.bars, self.o * factor, self.h * factor, self.lo * factor, self.c * factor, self.v)


def _place(n: int, values: Array) -> Array:
    """A length-n column, NaN where the value is undefined, `values` right-aligned."""
    out = np.full(n, np.nan)
    out[n - len(values) :] = values
    return out


def _zscore(x: Array, window: int) -> Array:
    w = sliding_window_view(x, window)
    mean, std = w.mean(axis=1), w.std(axis=1, ddof=1)
    flat = np.ptp(w, axis=1) == 0  # exactly the windows whose exact variance is 0
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(flat, 0.0, (x[window - 1 :] - mean) / std)
    return np.clip(z, -5.0, 5.0)


def _sma(x: Array, window: int) -> Array:
    mean: Array = sliding_window_view(x, window).mean(axis=1)
    return mean


def _rolling_sum(x: Array, window: int) -> Array:
    total: Array = sliding_window_view(x, window).sum(axis=1)
    return total


def reference_outliers(x: Series, s: FeatureSettings) -> list[int]:
    """Bars that open and close beyond max(floor, k * std of the previous returns), on the same side."""
    assert s.outlier_k is not None
    w = s.volatility_window
    r = np.clip(np.log(x.c[1:] / x.c[:-1]), -s.return_clip, s.return_clip)  # r[i - 1]: return of bar i
    std = sliding_window_view(r, w).std(axis=1, ddof=1)  # std[j]: returns of bars j+1 .. j+w
    bar = np.arange(w + 1, len(x.c))
    threshold = np.maximum(s.outlier_floor, s.outlier_k * std[bar - w - 1])
    gap, move = np.log(x.o[bar] / x.c[bar - 1]), np.log(x.c[bar] / x.c[bar - 1])
    hit = (np.abs(gap) > threshold) & (np.abs(move) > threshold) & (np.sign(gap) == np.sign(move))
    return [int(i) for i in bar[hit]]


def reference(x: Series, s: FeatureSettings) -> Array:
    """Every feature computed from its textbook definition, shape (len(bars), n_features)."""
    c, h, lo, v = x.c, x.h, x.lo, x.v
    n, k = len(c), s.return_clip
    cols = [_place(n, np.clip(np.log(c[lag:] / c[:-lag]), -k, k)) for lag in s.return_lags]
    cols.append(_place(n, _zscore(c, s.zscore_window)))
    cols.append(_place(n, _zscore(np.log1p(v), s.zscore_window)))
    r1 = np.clip(np.log(c[1:] / c[:-1]), -k, k)
    w = sliding_window_view(r1, s.rsi_window)
    gain, loss = np.clip(w, 0, None).mean(axis=1), np.clip(-w, 0, None).mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rsi = np.where(loss == 0, np.where(gain == 0, 50.0, 100.0), 100.0 - 100.0 / (1.0 + gain / loss))
    cols.append(_place(n, (rsi - 50.0) / 50.0))
    cols.append(_place(n, np.sqrt((sliding_window_view(r1, s.volatility_window) ** 2).mean(axis=1))))
    cols.append(np.clip(np.log(h / lo), 0.0, k))
    with np.errstate(divide="ignore", invalid="ignore"):
        cols.append(np.where(h > lo, np.clip((c - lo) / (h - lo) - 0.5, -0.5, 0.5), 0.0))
    zw, vw = s.zscore_window, s.volatility_window
    if "macd" in s.extra:  # PPO form of MACD, with simple moving averages
        line = _sma(c, s.macd_fast)[s.macd_slow - s.macd_fast :] / _sma(c, s.macd_slow) - 1.0
        signal = _sma(line, s.macd_signal)
        cols += [_place(n, line), _place(n, signal), _place(n, line[s.macd_signal - 1 :] - signal)]
    if "bollinger" in s.extra:
        win = sliding_window_view(c, zw)
        mid, sd = win.mean(axis=1), win.std(axis=1, ddof=0)
        upper, lower = mid + 2 * sd, mid - 2 * sd
        with np.errstate(divide="ignore", invalid="ignore"):
            pctb = np.where(np.ptp(win, axis=1) == 0, 0.5, (c[zw - 1 :] - lower) / (upper - lower))
        cols += [_place(n, pctb), _place(n, (upper - lower) / mid)]
    if "atr" in s.extra:
        true_range = np.maximum(h[1:], c[:-1]) - np.minimum(lo[1:], c[:-1])
        cols.append(_place(n, _sma(true_range, vw) / c[vw:]))
    if "vwap" in s.extra:
        volume = _rolling_sum(v, zw)
        with np.errstate(divide="ignore", invalid="ignore"):
            vwap = _rolling_sum((h + lo + c) / 3 * v, zw) / volume
            cols.append(_place(n, np.where(volume == 0, 0.0, np.log(c[zw - 1 :] / vwap))))
    if "obv" in s.extra:
        obv = np.concatenate(([0.0], np.cumsum(np.sign(np.diff(c)) * v[1:])))  # exact: integer volumes
        volume = _rolling_sum(v[1:], zw)
        with np.errstate(divide="ignore", invalid="ignore"):
            cols.append(_place(n, np.where(volume == 0, 0.0, (obv[zw:] - obv[:-zw]) / volume)))
    if "time" in s.extra:
        ts = x.ts
        day = ts.astype("datetime64[D]")
        seconds = (ts - day).astype("timedelta64[us]").astype(np.float64) / 1e6
        weekday = (day.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
        tod, dow = 2 * np.pi * seconds / 86_400, 2 * np.pi * weekday / 7
        cols += [np.sin(tod), np.cos(tod), np.sin(dow), np.cos(dow)]
    return np.column_stack(cols)


def assert_matches(rows: Array, ref: Array, settings: FeatureSettings) -> None:
    for j, name in enumerate(feature_names(settings)):
        np.testing.assert_allclose(rows[:, j], ref[:, j], rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("settings", [DEFAULT, ODD], ids=["default", "odd"])
def test_incremental_matches_batch_reference(aapl_span: list[Bar], settings: FeatureSettings) -> None:
    rows, first = feature_matrix(aapl_span, settings)
    ref = reference(Series.of(aapl_span), settings)
    lookback = SymbolFeatures(settings).lookback
    lags = settings.return_lags
    assert lookback == max(lags[-1] + 1, settings.zscore_window, settings.rsi_window + 1,
                           settings.volatility_window + 1)  # fmt: skip
    assert first == lookback - 1
    assert rows.shape == (len(aapl_span) - first, len(feature_names(settings)))
    assert np.isnan(ref[first - 1]).any()  # the reference agrees that nothing is defined earlier
    assert_matches(rows, ref[first:], settings)


def test_split_is_clipped_not_a_crash(aapl_span: list[Bar]) -> None:
    rows, first = feature_matrix(aapl_span, DEFAULT)
    at = next(i for i, b in enumerate(aapl_span) if b.ts == SPLIT) - first
    names = feature_names(DEFAULT)
    for lag in DEFAULT.return_lags:
        assert rows[at, names.index(f"ret_{lag}")] == -DEFAULT.return_clip
    assert np.abs(rows[:, : len(DEFAULT.return_lags)]).max() <= DEFAULT.return_clip
    assert np.isfinite(rows).all()
    assert (np.abs(rows[:, names.index("rsi_14")]) <= 1).all()


def test_constant_bars_give_zeros() -> None:
    start = datetime(2024, 1, 2, 14, tzinfo=UTC)
    bars = [Bar("X", start + timedelta(hours=i), 10.0, 10.0, 10.0, 10.0, 500.0) for i in range(40)]
    rows, first = feature_matrix(bars, DEFAULT)
    assert first == SymbolFeatures(DEFAULT).lookback - 1
    assert rows.shape[0] == 40 - first
    assert bits(rows) == bits(np.zeros_like(rows))


def test_feature_names_and_sizes() -> None:
    assert feature_names(DEFAULT) == (
        "ret_1", "ret_2", "ret_4", "ret_8", "z_close_20", "z_logvol_20", "rsi_14", "rvol_20",
        "log_range", "close_loc",
    )  # fmt: skip
    assert feature_names(ODD)[:3] == ("ret_1", "ret_3", "ret_24")  # config sorts the lags
    engine = FeatureEngine(DEFAULT, 32, ["AAPL"])
    assert engine.lookback == SymbolFeatures(DEFAULT).lookback == 21
    assert engine.warmup_bars == 52
    assert engine.names == feature_names(DEFAULT)


# --- optional features and outlier handling: values -------------------------------------------------


@pytest.mark.parametrize("settings", [ALL, ODD_ALL], ids=["all", "odd_all"])
def test_extras_match_batch_reference(aapl_span: list[Bar], settings: FeatureSettings) -> None:
    rows, first = feature_matrix(aapl_span, settings)
    lookback = SymbolFeatures(settings).lookback
    base = SymbolFeatures(settings.model_copy(update={"extra": []})).lookback
    zw, vw = settings.zscore_window, settings.volatility_window
    assert lookback == max(base, settings.macd_slow + settings.macd_signal - 1, zw + 1, vw + 1)
    assert first == lookback - 1
    ref = reference(Series.of(aapl_span), settings)  # outlier handling off: the raw series, split and all
    assert np.isnan(ref[first - 1]).any()
    assert_matches(rows, ref[first:], settings)


@pytest.mark.parametrize("settings", [ALL_OUT, ODD_ALL_OUT], ids=["all", "odd_all"])
def test_outlier_handling_matches_reference_on_adjusted_series(
    aapl_span: list[Bar], aapl_span_out: Run, settings: FeatureSettings
) -> None:
    bars = aapl_span if settings is ALL_OUT else aapl_span[2000:3600]  # a shorter span for the second
    x = Series.of(bars)
    flagged = reference_outliers(x, settings)
    assert hours(bars, flagged) == ["2005-02-28T14"]
    got = aapl_span_out if settings is ALL_OUT else run(bars, settings)
    assert got.flagged == flagged
    plain = SymbolFeatures(settings.model_copy(update={"outlier_k": None})).lookback
    assert SymbolFeatures(settings).lookback == plain + settings.volatility_window
    assert got.first == plain + settings.volatility_window - 1
    # The reference: textbook formulas on the series adjusted by the ratios of the flagged bars.
    assert_matches(got.rows, reference(x.adjusted(flagged), settings)[got.first :], settings)


def test_outlier_handling_around_every_aapl_event(aapl_events: list[tuple[list[Bar], Run]]) -> None:
    expected = [[AAPL_SPLITS[0], AAPL_CRASH], [AAPL_SPLITS[2]], [AAPL_SPLITS[3]]]
    for (bars, got), events in zip(aapl_events, expected, strict=True):
        x = Series.of(bars)
        flagged = reference_outliers(x, ALL_OUT)
        assert hours(bars, flagged) == events
        assert got.flagged == flagged
        assert_matches(got.rows, reference(x.adjusted(flagged), ALL_OUT)[got.first :], ALL_OUT)
        for i, outlier in zip(flagged, got.outliers, strict=True):
            bar, prev = bars[i], bars[i - 1]
            assert (outlier.symbol, outlier.ts, outlier.ratio) == ("AAPL", bar.ts, bar.open / prev.close)
            assert outlier.gap == math.log(bar.open / prev.close)
            assert outlier.move == math.log(bar.close / prev.close)
            assert outlier.threshold == 0.25  # the floor: k * std stays below it at every one of them


@pytest.mark.parametrize(
    ("symbol", "expected"),
    [("AAPL", sorted([*AAPL_SPLITS, AAPL_CRASH])), ("SPY", []), ("IBM", [IBM_SPLIT])],
)
def test_outliers_flagged_in_bundled_data(
    request: pytest.FixtureRequest, symbol: str, expected: list[str]
) -> None:
    bars = load_bars("IBM") if symbol == "IBM" else request.getfixturevalue(symbol.lower())
    detector = GapOutlierDetector(DEFAULT_OUT.volatility_window, 10.0, 0.25, DEFAULT_OUT.return_clip)
    flagged = [i for i, bar in enumerate(bars) if detector.update(bar) is not None]
    assert hours(bars, flagged) == expected
    assert reference_outliers(Series.of(bars), DEFAULT_OUT) == flagged
    if symbol == "IBM":
        # A bad print of the open (159.58 after a close of 79.82; the bar closes at 80.11): the gap alone
        # is a 2:1 "split", the close does not confirm it, and rescaling there would invent a crash.
        at = next(i for i, b in enumerate(bars) if b.ts == datetime(2002, 12, 23, 14, tzinfo=UTC))
        assert math.log(bars[at].open / bars[at - 1].close) > 0.69
        assert at not in flagged


def test_split_does_not_poison_price_features(aapl_span: list[Bar]) -> None:
    split = next(i for i, b in enumerate(aapl_span) if b.ts == SPLIT)
    bars, at = aapl_span[split - 200 : split + 100], 200
    off, on = run(bars, ALL), run(bars, ALL_OUT)
    names = feature_names(ALL)
    after_off = off.rows[at - off.first : at - off.first + 40]  # the split bar and 39 after it
    after_on = on.rows[at - on.first : at - on.first + 40]

    def col(rows: Array, name: str) -> Array:
        return rows[:, names.index(name)]

    bar = bars[at]
    assert col(after_off, "ret_1")[0] == -0.1  # clipped
    np.testing.assert_allclose(col(after_on, "ret_1")[0], math.log(bar.close / bar.open), rtol=1e-12)  # gap 0
    assert col(after_off, "z_close_20")[0] < -4
    # Off, the split dominates every price-level feature for a window or more; on, nothing stands out.
    assert col(after_off, "vwap_dist_20")[0] < -0.6 and np.abs(col(after_on, "vwap_dist_20")).max() < 0.06
    assert col(after_off, "bb_width_20").max() > 1 and col(after_on, "bb_width_20").max() < 0.12
    assert np.abs(col(after_off, "macd_12_26")).max() > 0.3
    assert np.abs(col(after_on, "macd_12_26")).max() < 0.03
    assert col(after_off, "atr_20")[0] > 0.07 and col(after_on, "atr_20").max() < 0.02
    # Volume-based features see raw volumes either way: only prices are rescaled.
    for name in ("z_logvol_20", "obv_chg_20", "log_range", "close_loc"):
        assert bits(col(after_off, name)) == bits(col(after_on, name)), name


def test_extras_leave_default_columns_alone(aapl_span: list[Bar]) -> None:
    bars = aapl_span[2000:4000]  # across the split
    base, first = feature_matrix(bars, DEFAULT)
    rows, first_all = feature_matrix(bars, ALL)
    width = len(feature_names(DEFAULT))
    assert feature_names(ALL)[:width] == feature_names(DEFAULT)
    assert bits(rows[:, :width]) == bits(base[first_all - first :])


def test_outlier_handling_changes_nothing_when_nothing_is_flagged(spy: list[Bar]) -> None:
    bars = spy[-1500:]
    on, off = run(bars, ALL_OUT), run(bars, ALL)
    assert on.flagged == []
    delay = ALL_OUT.volatility_window  # the detector's warm-up, part of lookback
    assert on.first == off.first + delay
    assert bits(on.rows) == bits(off.rows[delay:])


def test_constant_bars_with_extras() -> None:
    start = datetime(2024, 1, 2, 14, tzinfo=UTC)
    bars = [Bar("X", start + timedelta(hours=i), 10.0, 10.0, 10.0, 10.0, 500.0) for i in range(80)]
    rows, first = feature_matrix(bars, ALL)
    names = feature_names(ALL)
    assert first == SymbolFeatures(ALL).lookback - 1 == 33
    expected = dict.fromkeys(names, 0.0)
    expected["bb_pctb_20"] = 0.5  # a flat window: the close sits in the middle of a zero-width band
    for name in ("tod_sin", "tod_cos", "dow_sin", "dow_cos"):
        expected[name] = math.nan  # checked against the reference elsewhere
    for j, name in enumerate(names):
        if not math.isnan(expected[name]):
            assert (rows[:, j] == expected[name]).all(), name
    silent = [replace(b, volume=0.0) for b in bars]  # no volume: VWAP and OBV say 0, not NaN
    rows, _ = feature_matrix(silent, ALL)
    assert np.isfinite(rows).all()
    for name in ("vwap_dist_20", "obv_chg_20"):
        assert (rows[:, names.index(name)] == 0).all(), name


def test_time_features_use_utc() -> None:
    monday_6am = datetime(2024, 1, 1, 6, tzinfo=UTC)
    bars = [
        Bar("X", monday_6am, 1.0, 1.0, 1.0, 1.0, 1.0),
        Bar("X", datetime(2024, 1, 3, 20), 1.0, 1.0, 1.0, 1.0, 1.0),  # naive: taken as UTC
        Bar("X", datetime(2024, 1, 6, 1, tzinfo=timezone(timedelta(hours=3))), 1.0, 1.0, 1.0, 1.0, 1.0),
    ]
    got = [CalendarEncoding().update(bar) for bar in bars]
    tau = 2 * math.pi
    expected = [
        (1.0, 0.0, 0.0, 1.0),  # a quarter of the day, weekday 0
        (math.sin(tau * 20 / 24), math.cos(tau * 20 / 24), math.sin(tau * 2 / 7), math.cos(tau * 2 / 7)),
        (math.sin(tau * 22 / 24), math.cos(tau * 22 / 24), math.sin(tau * 4 / 7), math.cos(tau * 4 / 7)),
    ]  # Saturday 01:00 at +03:00 is Friday 22:00 UTC
    np.testing.assert_allclose(got, expected, atol=1e-15)


def test_extra_feature_names_and_sizes() -> None:
    assert feature_names(ALL)[10:] == (
        "macd_12_26", "macd_signal_9", "macd_hist", "bb_pctb_20", "bb_width_20", "atr_20", "vwap_dist_20",
        "obv_chg_20", "tod_sin", "tod_cos", "dow_sin", "dow_cos",
    )  # fmt: skip
    assert feature_names(ODD_ALL)[9:17] == (
        "macd_5_13", "macd_signal_4", "macd_hist", "bb_pctb_7", "bb_width_7", "atr_5", "vwap_dist_7",
        "obv_chg_7",
    )  # fmt: skip
    assert feature_names(FeatureSettings(extra=["obv", "atr"]))[10:] == ("atr_20", "obv_chg_20")
    assert FeatureSettings.extra_choices() == ("macd", "bollinger", "atr", "vwap", "obv", "time")
    assert ALL.extra == list(FeatureSettings.extra_choices())  # config order does not matter
    for name in FeatureSettings.extra_choices():  # each indicator's width is its number of columns
        one = FeatureSettings(extra=[name])
        (indicator,) = SymbolFeatures(one)._extras
        assert indicator.width == len(feature_names(one)) - 10, name
    engine = FeatureEngine(ALL_OUT, 32, ["AAPL"])
    assert engine.lookback == SymbolFeatures(ALL_OUT).lookback == 34 + 20
    assert engine.warmup_bars == 54 + 31
    assert engine.names == feature_names(ALL_OUT) == feature_names(ALL)  # outlier handling adds no column
    assert len(set(engine.names)) == len(engine.names)


def test_settings_of_older_cards_read_as_todays_defaults() -> None:
    # Cards of models trained before the optional keys existed store only these five: the registry reads
    # them through FeatureSettings, so they equal today's default settings, and the bundled model matches.
    old = {"return_lags": [1, 2, 4, 8], "zscore_window": 20, "rsi_window": 14, "volatility_window": 20,
           "return_clip": 0.1}  # fmt: skip
    assert FeatureSettings.model_validate(old) == DEFAULT
    dump = ODD_ALL_OUT.model_copy(update={"outlier_floor": 0.3}).model_dump(mode="json")
    assert {k: dump[k] for k in dump.keys() - old.keys()} == {
        "extra": ["macd", "bollinger", "atr", "vwap", "obv", "time"], "macd_fast": 5, "macd_slow": 13,
        "macd_signal": 4, "outlier_k": 10.0, "outlier_floor": 0.3,
    }  # fmt: skip
    assert FeatureSettings.model_validate(dump).model_dump(mode="json") == dump


def test_unknown_extra_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"unknown extra feature 'ema'; choose from macd, bollinger, atr"):
        FeatureSettings(extra=["macd", "ema"])
    with pytest.raises(ValueError, match="extra must not repeat"):
        FeatureSettings(extra=["atr", "atr"])
    with pytest.raises(ValueError, match=r"macd_fast \(26\) must be below macd_slow \(26\)"):
        FeatureSettings(macd_fast=26)
    with pytest.raises(ValueError, match="outlier_k"):
        FeatureSettings(outlier_k=0)
    unchecked = FeatureSettings.model_construct(extra=["ema"])  # bypasses validation
    with pytest.raises(ValueError, match="unknown extra feature 'ema'"):
        feature_names(unchecked)
    with pytest.raises(ValueError, match="unknown extra feature 'ema'"):
        SymbolFeatures(unchecked)
    config = {
        "feed": {"data_dir": str(DATA)},
        "strategies": [{"name": "s", "symbols": ["AAPL"], "model_dir": "m", "features": {"extra": ["ema"]}}],
    }
    with pytest.raises(ConfigError, match=r"strategies\[0\]\.features\.extra: unknown extra feature 'ema'"):
        parse_config(config, DATA)


def test_engine_reports_the_latest_outlier(aapl_span: list[Bar]) -> None:
    engine = FeatureEngine(DEFAULT_OUT, 8, ["AAPL"])
    at = next(i for i, b in enumerate(aapl_span) if b.ts == SPLIT)
    for bar in aapl_span[: at + 5]:
        engine.update(bar)
        if bar.ts < SPLIT:
            assert engine.last_outlier("AAPL") is None
    outlier = engine.last_outlier("AAPL")
    assert outlier is not None and outlier.ts == SPLIT
    assert outlier.ratio == aapl_span[at].open / aapl_span[at - 1].close
    assert FeatureEngine(DEFAULT, 8, ["AAPL"]).last_outlier("AAPL") is None


# --- finite memory and no look-ahead ----------------------------------------------------------------


def test_restart_rows_are_bit_identical(aapl: list[Bar], aapl_full: tuple[Array, int]) -> None:
    rows, first = aapl_full
    lookback = SymbolFeatures(DEFAULT).lookback
    split = next(i for i, b in enumerate(aapl) if b.ts == SPLIT)
    # Cold starts that end at the tail, right after the split, and deep in the history.
    for end in (len(aapl), split + 3, split + 30, 25_000):
        for extra in (0, 1, 17, 400):
            start = end - lookback - extra
            cold, cold_first = feature_matrix(aapl[start:end], DEFAULT)
            assert cold_first == lookback - 1
            assert cold.shape[0] == extra + 1
            assert bits(cold) == bits(rows[end - first - cold.shape[0] : end - first]), (end, extra)


def test_restart_engine_windows_are_bit_identical(aapl: list[Bar], spy: list[Bar]) -> None:
    # SPY's whole history, interleaved with AAPL's recent years to show the symbols do not interfere.
    merged = sorted(spy + aapl[-5000:], key=lambda b: (b.ts, b.symbol))
    warm = FeatureEngine(DEFAULT, 32, ["AAPL", "SPY"])
    for bar in merged:
        warm.update(bar)
    cold = FeatureEngine(DEFAULT, 32, ["SPY", "AAPL"])
    for symbol, bars in (("AAPL", aapl), ("SPY", spy)):
        tail = bars[-cold.warmup_bars :]
        results = [cold.update(b) for b in tail]
        assert results == [False] * (len(tail) - 1) + [True]  # ready exactly at warmup_bars
        assert warm.ready(symbol) and cold.ready(symbol)
        assert bits(warm.window(symbol)) == bits(cold.window(symbol))


def test_restart_rows_are_bit_identical_across_outliers(
    aapl_span: list[Bar], aapl_span_out: Run, aapl_events: list[tuple[list[Bar], Run]]
) -> None:
    # The exactness condition with outlier handling on is the usual one, a cold start of `lookback` bars,
    # because lookback covers the detector's window for every decision that reaches the row. Cold
    # starts are placed so that each outlier sits at every position in their window and just outside;
    # the boundary is the cold start that begins volatility_window + 1 bars before the outlier (its
    # detector warms up exactly at that bar), so every start near it is tried.
    lookback = SymbolFeatures(ALL_OUT).lookback
    w = ALL_OUT.volatility_window
    checked = 0
    for bars, warm in [(aapl_span, aapl_span_out), *aapl_events]:
        assert warm.flagged
        for i in warm.flagged:
            starts = {*range(i - w - 4, i + 3), *range(i - lookback - 2, i + 3, 5)}
            for start in sorted(starts):
                for extra in (0, 9) if start % 2 else (0,):
                    end = start + lookback + extra
                    cold, cold_first = feature_matrix(bars[start:end], ALL_OUT)
                    assert cold_first == lookback - 1 and cold.shape[0] == extra + 1
                    expected = warm.rows[end - warm.first - cold.shape[0] : end - warm.first]
                    assert bits(cold) == bits(expected), (bars[i].ts, start - i, extra)
                    checked += 1
    assert checked > 200


def _perturb(bar: Bar, rng: random.Random) -> Bar:
    f = rng.uniform(0.5, 2.0)
    return replace(bar, open=bar.open * f, high=bar.high * f * 1.01, low=bar.low * f * 0.99,
                   close=bar.close * f, volume=bar.volume * rng.uniform(0.1, 10))  # fmt: skip


@pytest.mark.parametrize("settings", [DEFAULT, ALL_OUT], ids=["default", "all_out"])
def test_no_look_ahead(aapl_span: list[Bar], settings: FeatureSettings) -> None:
    # With outlier handling on, the perturbed future bars are themselves flagged as outliers (scale
    # factors up to 2) and rescale the stored history: rows already given must not notice.
    rng = random.Random(3)
    at = next(i for i, b in enumerate(aapl_span) if b.ts == SPLIT)
    split, after = (1200, 800) if settings is DEFAULT else (500, 300)  # the extras cost twice as much
    bars = aapl_span[at - split : at + after]
    base, first = feature_matrix(bars, settings)
    for t in (first, first + 1, 300, split - 1, split, split + 7, len(bars) - 100):
        changed = bars[: t + 1] + [_perturb(b, rng) for b in bars[t + 1 :]]
        rows, first_changed = feature_matrix(changed, settings)
        assert first_changed == first
        kept = t + 1 - first
        assert bits(rows[:kept]) == bits(base[:kept]), t
        assert not np.array_equal(rows[kept:], base[kept:])  # the perturbation did reach the features
        truncated, _ = feature_matrix(bars[: t + 1], settings)
        assert bits(truncated) == bits(base[:kept])


# --- SymbolFeatures input checks --------------------------------------------------------------------


@pytest.mark.parametrize(
    "spoil",
    [
        lambda b: replace(b, ts=b.ts - timedelta(hours=5)),
        lambda b: b,  # the previous bar again
        lambda b: replace(b, symbol="SPY"),
        lambda b: replace(b, close=math.nan),
        lambda b: replace(b, low=0.0),
        lambda b: replace(b, high=b.low / 2),
        lambda b: replace(b, volume=-1.0),
    ],
    ids=["earlier", "duplicate", "symbol", "nan", "zero_low", "high_below_low", "negative_volume"],
)
def test_bad_bar_is_refused_without_changing_state(aapl_span: list[Bar], spoil: Callable[[Bar], Bar]) -> None:
    bars = aapl_span[:60]
    features = SymbolFeatures(DEFAULT)
    expected, _ = feature_matrix(bars, DEFAULT)
    got = []
    for i, bar in enumerate(bars):
        if i == 40:
            with pytest.raises(ValueError, match=r"AAPL|SPY"):
                features.update(spoil(bars[i - 1]))
        row = features.update(bar)
        if row is not None:
            got.append(row)
    assert bits(np.array(got)) == bits(expected)


# --- FeatureEngine ring buffer ----------------------------------------------------------------------


def test_ring_buffer_is_chronological_and_a_copy(aapl_span: list[Bar]) -> None:
    bars = aapl_span[:80]
    rows, first = feature_matrix(bars, DEFAULT)
    engine = FeatureEngine(DEFAULT, 5, ["AAPL", "SPY"])
    assert engine.window_size == 5 and engine.symbols == ("AAPL", "SPY")
    for i, bar in enumerate(bars):
        produced = i - first + 1  # rows so far
        assert engine.update(bar) == (produced >= 5)
        assert engine.ready("AAPL") == (produced >= 5)
        if produced < 5:
            with pytest.raises(ValueError, match="not full"):
                engine.window("AAPL")
            continue
        window = engine.window("AAPL")  # wraps around many times over 80 bars
        assert window.shape == (5, len(engine.names)) and window.dtype == np.float32
        assert bits(window) == bits(rows[produced - 5 : produced].astype(np.float32))
        window[:] = 99.0
        assert not (engine.window("AAPL") == 99.0).any()
    assert not engine.ready("SPY")


def test_unknown_symbol_is_a_clear_key_error(aapl_span: list[Bar]) -> None:
    engine = FeatureEngine(DEFAULT, 4, ["AAPL"])
    for call in (
        lambda: engine.update(replace(aapl_span[0], symbol="MSFT")),
        lambda: engine.ready("MSFT"),
        lambda: engine.window("MSFT"),
    ):
        with pytest.raises(KeyError, match=r"unknown symbol 'MSFT'.*\['AAPL'\]"):
            call()
    with pytest.raises(ValueError, match="twice"):
        FeatureEngine(DEFAULT, 4, ["AAPL", "AAPL"])
    with pytest.raises(ValueError, match="window"):
        FeatureEngine(DEFAULT, 0, ["AAPL"])


def test_feature_matrix_with_too_few_bars(aapl_span: list[Bar]) -> None:
    bars = aapl_span[:20]  # lookback is 21
    rows, first = feature_matrix(bars, DEFAULT)
    assert rows.shape == (0, len(feature_names(DEFAULT))) and rows.dtype == np.float64
    assert first == len(bars)


# --- ExactRollingMoments ----------------------------------------------------------------------------


def _mixed_values(rng: random.Random, n: int) -> list[float]:
    scales = (1e8, 1e-8, 1.0, 3e15, 1e-300)
    return [rng.choice(scales) * rng.gauss(0, 1) for _ in range(n)]


@pytest.mark.parametrize("window", [1, 2, 7, 64])
def test_moments_are_exact(window: int) -> None:
    rng = random.Random(window)
    moments = ExactRollingMoments(window)
    values = _mixed_values(rng, 2 * window + 100)
    for i, x in enumerate(values):
        moments.push(x)
        w = values[max(0, i + 1 - window) : i + 1]
        assert moments.count == len(w) and moments.full == (len(w) == window)
        assert moments.sum() == math.fsum(w)
        assert moments.mean() == statistics.mean(w)
        assert moments.mean_square() == float(sum(Fraction(v) ** 2 for v in w) / len(w))
        if len(w) >= 2:
            assert moments.variance() == statistics.variance(w)
            assert moments.std() == math.sqrt(statistics.variance(w))


def test_moments_do_not_remember_history() -> None:
    rng = random.Random(11)
    window = _mixed_values(rng, 9)
    prefixes = [
        [],
        _mixed_values(rng, 5000),
        [1.7976931348623157e308, -1.7976931348623157e308, 5e-324, 1e8, 1e-8, -0.0] * 50,
    ]
    states = []
    for prefix in prefixes:
        moments = ExactRollingMoments(len(window))
        for x in [*prefix, *window]:
            moments.push(x)
        states.append((moments.sum(), moments.mean(), moments.mean_square(), moments.variance()))
    assert states[0] == states[1] == states[2]
    assert all(math.copysign(1, a) == math.copysign(1, b) for a, b in zip(states[0], states[2], strict=True))


def test_naive_float_sums_would_drift() -> None:
    # The reason for exact integers: a float running sum carries rounding from long-gone values.
    values = [1e8, 1e-8, -1e8, 3.3] * 1000
    naive, exact = 0.0, ExactRollingMoments(4)
    for i, x in enumerate(values):
        naive += x - (values[i - 4] if i >= 4 else 0.0)
        exact.push(x)
    assert exact.sum() == math.fsum(values[-4:])
    assert naive != exact.sum()


def test_moments_refuse_bad_input() -> None:
    moments = ExactRollingMoments(3)
    with pytest.raises(ValueError, match="at least 1"):
        moments.mean()
    moments.push(2.0)
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="finite"):
            moments.push(bad)
    assert moments.count == 1 and moments.mean() == 2.0
    with pytest.raises(ValueError, match="at least 2"):
        moments.variance()
    with pytest.raises(ValueError, match="window"):
        ExactRollingMoments(0)


# --- ExactRollingSum and rescaling ------------------------------------------------------------------


@pytest.mark.parametrize("window", [1, 3, 64])
def test_rolling_sum_is_exact(window: int) -> None:
    rng = random.Random(window)
    rolling = ExactRollingSum(window)
    values = _mixed_values(rng, 2 * window + 100)
    for i, x in enumerate(values):
        rolling.push(x)
        w = values[max(0, i + 1 - window) : i + 1]
        assert rolling.count == len(w) and rolling.full == (len(w) == window) and rolling.values() == w
        assert rolling.sum() == math.fsum(w)
        assert rolling.mean() == statistics.mean(w)
        assert Fraction(rolling.scaled_sum, 2**1100) == sum(map(Fraction, w))
        assert rolling.deviation(x) == float(Fraction(x) - sum(map(Fraction, w)) / len(w))


def test_population_variance_and_deviation_are_exact() -> None:
    rng = random.Random(5)
    moments = ExactRollingMoments(6)
    values = _mixed_values(rng, 50)
    for i, x in enumerate(values):
        moments.push(x)
        w = values[max(0, i - 5) : i + 1]
        assert moments.variance(ddof=0) == statistics.pvariance(w)
        assert moments.std(ddof=0) == math.sqrt(statistics.pvariance(w))
        assert moments.deviation(x) == float(Fraction(x) - sum(map(Fraction, w)) / len(w))
    with pytest.raises(ValueError, match="ddof"):
        moments.variance(ddof=2)


@pytest.mark.parametrize("cls", [ExactRollingSum, ExactRollingMoments])
def test_rescale_is_pushing_the_rescaled_values(
    cls: type[ExactRollingSum] | type[ExactRollingMoments],
) -> None:
    rng = random.Random(8)
    values = [rng.uniform(10, 700) for _ in range(30)]
    factor = 92.69 / 645.57  # AAPL's 7:1 split, as detected: not a power of two, so products round
    rescaled, fresh = cls(7), cls(7)
    for x in values:
        rescaled.push(x)
    rescaled.rescale(factor)
    for x in values[-7:]:
        fresh.push(x * factor)
    assert rescaled.values() == fresh.values() == [x * factor for x in values[-7:]]
    assert (rescaled.sum(), rescaled.mean()) == (fresh.sum(), fresh.mean())
    if isinstance(rescaled, ExactRollingMoments) and isinstance(fresh, ExactRollingMoments):
        assert rescaled.variance() == fresh.variance() and rescaled.mean_square() == fresh.mean_square()
    before = rescaled.values()
    with pytest.raises(ValueError, match="float range"):
        rescaled.rescale(1e307)
    assert rescaled.values() == before  # nothing changed
