"""The feature stage: incremental values match batch references, memory is finite, nothing looks ahead."""

from __future__ import annotations

import csv
import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from bot.bars import Bar
from bot.config import FeatureSettings
from bot.features import FeatureEngine, SymbolFeatures, feature_matrix, feature_names
from bot.features.rolling import ExactRollingMoments

DATA = Path(__file__).resolve().parent.parent / "data" / "equities-1h"
DEFAULT = FeatureSettings()
# Unequal, non-default parameters catch a window or lag wired to the wrong indicator.
ODD = FeatureSettings(
    return_lags=[24, 1, 3], zscore_window=7, rsi_window=30, volatility_window=5, return_clip=0.05
)
SPLIT = datetime(2005, 2, 28, 14, tzinfo=UTC)  # first bar after AAPL's 2:1 split (88.97 -> 44.56)

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


def bits(a: npt.NDArray[np.floating]) -> bytes:
    """Raw bytes: equality means bit-identical, -0.0 and NaN payloads included."""
    return np.ascontiguousarray(a).tobytes()


# --- batch references, numpy over the whole series ---------------------------------------------------


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


def reference(bars: Sequence[Bar], s: FeatureSettings) -> Array:
    """Every feature computed from its textbook definition, shape (len(bars), n_features)."""
    c = np.array([b.close for b in bars])
    h = np.array([b.high for b in bars])
    lo = np.array([b.low for b in bars])
    v = np.array([b.volume for b in bars])
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
    return np.column_stack(cols)


@pytest.mark.parametrize("settings", [DEFAULT, ODD], ids=["default", "odd"])
def test_incremental_matches_batch_reference(aapl_span: list[Bar], settings: FeatureSettings) -> None:
    rows, first = feature_matrix(aapl_span, settings)
    ref = reference(aapl_span, settings)
    lookback = SymbolFeatures(settings).lookback
    lags = settings.return_lags
    assert lookback == max(lags[-1] + 1, settings.zscore_window, settings.rsi_window + 1,
                           settings.volatility_window + 1)  # fmt: skip
    assert first == lookback - 1
    assert rows.shape == (len(aapl_span) - first, len(feature_names(settings)))
    assert np.isnan(ref[first - 1]).any()  # the reference agrees that nothing is defined earlier
    for j, name in enumerate(feature_names(settings)):
        np.testing.assert_allclose(rows[:, j], ref[first:, j], rtol=1e-9, atol=1e-11, err_msg=name)


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


def _perturb(bar: Bar, rng: random.Random) -> Bar:
    f = rng.uniform(0.5, 2.0)
    return replace(bar, open=bar.open * f, high=bar.high * f * 1.01, low=bar.low * f * 0.99,
                   close=bar.close * f, volume=bar.volume * rng.uniform(0.1, 10))  # fmt: skip


def test_no_look_ahead(aapl_span: list[Bar]) -> None:
    rng = random.Random(3)
    at = next(i for i, b in enumerate(aapl_span) if b.ts == SPLIT)
    bars = aapl_span[at - 1200 : at + 800]
    base, first = feature_matrix(bars, DEFAULT)
    split = 1200
    for t in (first, first + 1, 300, split - 1, split, split + 7, 1900):
        changed = bars[: t + 1] + [_perturb(b, rng) for b in bars[t + 1 :]]
        rows, first_changed = feature_matrix(changed, DEFAULT)
        assert first_changed == first
        kept = t + 1 - first
        assert bits(rows[:kept]) == bits(base[:kept]), t
        assert not np.array_equal(rows[kept:], base[kept:])  # the perturbation did reach the features
        truncated, _ = feature_matrix(bars[: t + 1], DEFAULT)
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
