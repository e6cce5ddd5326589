"""The batch feature path (BatchFeatures, FeatureEngine.update_many / windows): the same rows as
SymbolFeatures, bit for bit, on the bundled real bars, whatever the batches look like; and the exact
arithmetic underneath (exact.py) against Python's exact integers and fractions."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from bot.bars import Bar
from bot.config import FeatureSettings
from bot.features import FeatureEngine, SymbolFeatures, feature_matrix, feature_names
from bot.features.batch import BatchFeatures, supported
from bot.features.exact import (
    LD,
    Batch,
    OneLimb,
    Rings,
    TwoLimb,
    U,
    certify,
    exact_from_residue,
    resolve,
)
from bot.feeds.replay import load_csv

pytestmark = pytest.mark.skipif(
    not supported(FeatureSettings()), reason="needs a 64-bit long double significand"
)

DATA = Path(__file__).resolve().parent.parent / "data" / "equities-1h"
CONFIG = FeatureSettings(
    extra=["macd", "bollinger", "atr", "vwap", "obv", "time"], outlier_k=10.0
)  # config.toml's features
ODD = FeatureSettings(
    return_lags=[24, 1, 3], zscore_window=7, rsi_window=30, volatility_window=5, return_clip=0.05,
    extra=["obv", "vwap", "macd"], macd_fast=5, macd_slow=13, macd_signal=4, outlier_k=10.0,
)  # fmt: skip
# Bars just before each outlier the detector flags in the bundled data (AAPL's splits and 2000 crash, IBM's
# split), and a quiet stretch of SPY: re-labelled, they make symbols that each cross an event.
EVENTS = [("AAPL", "2000-06-21T13"), ("AAPL", "2000-09-29T13"), ("AAPL", "2005-02-28T14"),
          ("AAPL", "2014-06-09T13"), ("AAPL", "2020-08-31T13"), ("IBM", "1999-05-27T13"),
          ("SPY", "2016-03-01T15")]  # fmt: skip

Array = npt.NDArray[np.float64]
TWO = Fraction(2)


def bits(a: npt.NDArray[np.floating]) -> bytes:
    """Raw bytes: equality means bit-identical, -0.0 and NaN payloads included."""
    return np.ascontiguousarray(a).tobytes()


@pytest.fixture(scope="module")
def history() -> dict[str, list[Bar]]:
    return {s: load_csv(DATA / f"{s}.csv", s, timedelta(hours=1))[0] for s in ("AAPL", "IBM", "SPY")}


def relabelled(history: dict[str, list[Bar]], n: int, length: int, lead: int = 120) -> list[list[Bar]]:
    """n symbols S000.. of `length` bars each on one timeline: symbol i replays the real bars from `lead` +
    3 * (i // len(EVENTS)) bars before event i % len(EVENTS)."""
    timeline = [datetime(2021, 1, 4, 14, tzinfo=UTC) + timedelta(hours=t) for t in range(length)]
    out = []
    for i in range(n):
        symbol, hour = EVENTS[i % len(EVENTS)]
        series = history[symbol]
        at = next(j for j, b in enumerate(series) if b.ts.strftime("%Y-%m-%dT%H") == hour)
        first = at - lead - 3 * (i // len(EVENTS))
        out.append(
            [
                replace(b, symbol=f"S{i:03d}", ts=timeline[t])
                for t, b in enumerate(series[first : first + length])
            ]
        )
    return out


def reference_rows(series: Sequence[Bar], settings: FeatureSettings) -> npt.NDArray[np.float32]:
    rows, _ = feature_matrix(series, settings)
    return rows.astype(np.float32)


# --- the rows, bit for bit ----------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [CONFIG, FeatureSettings(), ODD], ids=["config", "default", "odd"])
def test_batches_of_every_symbol_give_the_per_symbol_rows(
    history: dict[str, list[Bar]], settings: FeatureSettings
) -> None:
    series = relabelled(history, 21, 400)
    engine = FeatureEngine(settings, 1, [s[0].symbol for s in series], batch=True)
    got: dict[str, list[npt.NDArray[np.float32]]] = {s[0].symbol: [] for s in series}
    flagged = 0
    for t in range(len(series[0])):
        batch = [s[t] for s in series]
        for bar, ready in zip(batch, engine.update_many(batch), strict=True):
            if ready:
                got[bar.symbol].append(engine.window(bar.symbol)[0])
            outlier = engine.last_outlier(bar.symbol)
            flagged += outlier is not None and outlier.ts == bar.ts
    if settings is CONFIG:  # every event's span crossed it: rescaled state went through the batch path
        assert flagged >= 12
    for s in series:
        assert bits(np.array(got[s[0].symbol])) == bits(reference_rows(s, settings)), s[0].symbol


def _odd_bars(symbol: str, n: int, seed: int) -> list[Bar]:
    """Bars a real feed rarely sends, each kind for a while: a halt (flat prices, no volume), sub-cent and
    huge prices, volumes from 1e-6 to 1e12, fractional volumes: windows that fit no single int64 scale."""
    rng = random.Random(seed)
    t0 = datetime(2021, 1, 4, 14, tzinfo=UTC)
    bars, price = [], 100.0
    for t in range(n):
        phase = (t // 60) % 5
        if phase == 1:  # halted
            o = h = lo = c = price
            v = 0.0
        else:
            scale = {0: 1.0, 2: 1e-4, 3: 1e6, 4: 1.0}[phase]
            c = round(price * scale * math.exp(rng.gauss(0, 0.02)), 6 if phase != 2 else 12)
            o = c * math.exp(rng.gauss(0, 0.003))
            h, lo = max(o, c) * (1 + rng.random() * 0.002), min(o, c) * (1 - rng.random() * 0.002)
            v = 10.0 ** rng.uniform(-6, 12) if phase == 4 else float(rng.randrange(0, 10_000))
            price = c / scale
        bars.append(Bar(symbol, t0 + timedelta(hours=t), o, h, lo, c, v))
    return bars


@pytest.mark.parametrize("settings", [CONFIG, ODD], ids=["config", "odd"])
def test_odd_windows_give_the_per_symbol_rows(settings: FeatureSettings) -> None:
    series = [_odd_bars(f"S{i:03d}", 420, seed=i) for i in range(17)]
    engine = FeatureEngine(settings, 1, [s[0].symbol for s in series], batch=True)
    got: dict[str, list[npt.NDArray[np.float32]]] = {s[0].symbol: [] for s in series}
    for t in range(420):
        batch = [s[t] for s in series]
        for bar, ready in zip(batch, engine.update_many(batch), strict=True):
            if ready:
                got[bar.symbol].append(engine.window(bar.symbol)[0])
    for s in series:
        assert bits(np.array(got[s[0].symbol])) == bits(reference_rows(s, settings)), s[0].symbol


def test_any_mix_of_batches_gives_the_per_symbol_rows(history: dict[str, list[Bar]]) -> None:
    """Partial batches, several bars of a symbol in one call, bars one at a time, symbols that skip bars,
    and symbols moving from the per-symbol path to the batch path part way (batch=None)."""
    rng = random.Random(11)
    series = {s[0].symbol: s for s in relabelled(history, 24, 400)}
    symbols = list(series)
    engine = FeatureEngine(CONFIG, 3, symbols)
    assert not any(engine.batched(s) for s in symbols)  # everyone starts per symbol
    fed: dict[str, list[Bar]] = {s: [] for s in symbols}
    at = dict.fromkeys(symbols, 0)  # each symbol's next bar
    for step in range(200):
        kind = rng.random()
        chosen = [s for s in symbols if rng.random() < (0.9 if kind < 0.6 else 0.4)]
        for s in chosen[:2] if kind > 0.95 else []:  # skipped bars: a gap in the symbol's history
            at[s] += 2
        per_symbol = 3 if kind < 0.1 else 1  # several bars of each symbol in one call
        bars = [series[s][at[s] + k] for k in range(per_symbol) for s in chosen]
        for s in chosen:
            at[s] += per_symbol
        results = [engine.update(b) for b in bars] if step < 20 or kind > 0.9 else engine.update_many(bars)
        for bar, ready in zip(bars, results, strict=True):
            fed[bar.symbol].append(bar)
            assert ready == (len(fed[bar.symbol]) >= engine.warmup_bars)
    assert all(engine.batched(s) for s in symbols)  # handed over by the first pass of BATCH_FROM or more
    for s in symbols:
        assert bits(engine.window(s)) == bits(reference_rows(fed[s], CONFIG)[-3:]), s


def test_the_three_paths_agree(history: dict[str, list[Bar]]) -> None:
    series = relabelled(history, 18, 200)
    symbols = [s[0].symbol for s in series]
    engines = [FeatureEngine(CONFIG, 4, symbols, batch=b) for b in (True, False, None)]
    for t in range(200):
        batch = [s[t] for s in series]
        results = [e.update_many(batch) for e in engines]
        assert results[0] == results[1] == results[2]
    windows = [e.windows(symbols) for e in engines]
    assert bits(windows[0]) == bits(windows[1]) == bits(windows[2])


# --- FeatureEngine's batch API --------------------------------------------------------------------------


def test_windows_stacks_the_windows_and_views_only_when_asked(history: dict[str, list[Bar]]) -> None:
    series = relabelled(history, 17, 120)
    symbols = [s[0].symbol for s in series]
    engine = FeatureEngine(FeatureSettings(), 5, symbols)
    with pytest.raises(ValueError, match="not full"):
        engine.windows(symbols)
    for t in range(120):
        engine.update_many([s[t] for s in series])
    stacked = engine.windows(symbols)
    assert stacked.shape == (17, 5, len(engine.names)) and stacked.dtype == np.float32
    for i, symbol in enumerate(symbols):
        assert bits(stacked[i]) == bits(engine.window(symbol))
    picked = engine.windows(symbols[::-3])
    assert bits(picked) == bits(stacked[::-3])
    stacked[:] = 99.0  # a copy: the engine's rows are untouched
    assert not (engine.windows(symbols) == 99.0).any()
    view = engine.windows(symbols, copy=False)
    assert bits(view) == bits(engine.windows(symbols)) and not view.flags.writeable
    assert engine.windows(symbols[1:], copy=False).flags.writeable  # not every symbol: a copy
    with pytest.raises(KeyError, match="unknown symbol 'MSFT'"):
        engine.windows(["MSFT"])


@pytest.mark.parametrize("batch", [True, None], ids=["batch", "auto"])
def test_a_bad_bar_in_a_batch_changes_nothing(history: dict[str, list[Bar]], batch: bool | None) -> None:
    series = relabelled(history, 20, 100)
    symbols = [s[0].symbol for s in series]
    engine = FeatureEngine(CONFIG, 2, symbols, batch=batch)
    twin = FeatureEngine(CONFIG, 2, symbols, batch=batch)
    for t in range(90):
        bars = [s[t] for s in series]
        engine.update_many(bars)
        twin.update_many(bars)
    bars = [s[90] for s in series]
    spoiled = [*bars[:7], replace(bars[7], low=0.0), *bars[8:]]
    with pytest.raises(ValueError, match="S007"):
        engine.update_many(spoiled)
    late = [*bars, replace(series[3][89], ts=bars[0].ts - timedelta(hours=5))]  # a symbol twice, out of order
    with pytest.raises(ValueError, match="S003"):
        engine.update_many(late)
    with pytest.raises(KeyError, match="unknown symbol"):
        engine.update_many([*bars, replace(bars[0], symbol="MSFT")])
    for t in range(90, 100):
        bars = [s[t] for s in series]
        assert engine.update_many(bars) == twin.update_many(bars)
    assert bits(engine.windows(symbols)) == bits(twin.windows(symbols))


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "per-symbol"])
def test_flagged_names_each_outlier_bar_of_a_batch(history: dict[str, list[Bar]], batch: bool) -> None:
    """Two splits in a row of one symbol, both bars in one call: flagged() knows each (last_outlier only
    the second), as SymbolFeatures flags them."""
    series = relabelled(history, 17, 160)
    quiet = series[6]  # SPY, nothing flagged
    split = [
        replace(b, open=b.open / 4, high=b.high / 4, low=b.low / 4, close=b.close / 4) for b in quiet[150:]
    ]
    split[1:] = [
        replace(b, open=b.open / 4, high=b.high / 4, low=b.low / 4, close=b.close / 4) for b in split[1:]
    ]
    series[6] = quiet[:150] + split
    symbols = [s[0].symbol for s in series]
    engine = FeatureEngine(CONFIG, 2, symbols, batch=batch)
    for t in range(150):
        engine.update_many([s[t] for s in series])
    bars = [s[t] for t in (150, 151) for s in series]
    engine.update_many(bars)
    reference = SymbolFeatures(CONFIG)
    expected = {}
    for bar in series[6][:152]:
        reference.update(bar)
        if reference.last_outlier is not None and reference.last_outlier.ts == bar.ts:
            expected[bar.ts] = reference.last_outlier
    assert len(expected) == 2
    for bar in bars:
        assert engine.flagged(bar) == (expected.get(bar.ts) if bar.symbol == symbols[6] else None)
    assert engine.last_outlier(symbols[6]) == expected[series[6][151].ts]


def test_a_batch_of_nothing_is_nothing() -> None:
    engine = FeatureEngine(FeatureSettings(), 2, ["A"], batch=True)
    assert engine.update_many([]) == []


# --- exact arithmetic -----------------------------------------------------------------------------------


def _wrap(n: int) -> int:
    return ((n % 2**64) ^ 2**63) - 2**63


def _ld(n: int | Fraction) -> np.longdouble:
    return np.longdouble(str(float(n)) if isinstance(n, Fraction) else str(n))  # strtold: correctly rounded


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_certified_values_are_the_correctly_rounded_ones_and_resolve_decides_the_rest(layout: str) -> None:
    """certify reads a contiguous x87 long double's low significand bits directly (where it can) and
    works from q - r otherwise: both must be right."""
    rng = random.Random(5)
    cases: list[tuple[int, int]] = []
    for _ in range(20_000):
        den = rng.choice([1, 3, 9, 14, 20, 380, 400, rng.randrange(1, 2**40), rng.randrange(1, 2**62)])
        kind = rng.random()
        if kind < 0.4:  # a tie or an exact double, times den: what sums on a price grid often give
            sig, e = rng.randrange(2**52, 2**53), rng.randrange(-40, 40)
            twice = 2 * sig + rng.choice([-1, 0, 1, 0])
            num = rng.choice([1, -1]) * twice * den * 2 ** max(0, e - 1)
        elif kind < 0.5:  # around powers of two
            num = rng.choice([1, -1]) * (2 ** rng.randrange(0, 60) * den + rng.choice([-1, 0, 1]))
        else:
            num = rng.randrange(-(2 ** rng.randrange(1, 118)), 2 ** rng.randrange(1, 118))
        cases.append((num, den))
    nums, dens = [n for n, _ in cases], [d for _, d in cases]
    n_ld = np.array([_ld(n) for n in nums])
    d_ld = np.array([_ld(d) for d in dens])
    expected = np.array([float(Fraction(n, d)) for n, d in cases])
    quotient = n_ld / d_ld
    if layout == "strided":
        quotient = np.repeat(quotient, 2)[::2]
    value, uncertain = certify(quotient, 3 * U)
    assert (value[~uncertain] == expected[~uncertain]).all()
    assert uncertain.mean() < 0.5  # the ties, mostly
    todo = np.flatnonzero(uncertain)
    n_mod = np.array([_wrap(n) for n in nums], dtype=np.int64)
    d_mod = np.array([_wrap(d) for d in dens], dtype=np.int64)
    decided, undecided = resolve(value[todo], n_mod[todo], n_ld[todo], d_mod[todo], d_ld[todo])
    assert (decided[~undecided] == expected[todo][~undecided]).all()
    # Undecided only where N (scaled to make the midpoints integers) reaches 2**120: wide random N here.
    assert all(abs(nums[i]) * max(1, 2 ** (53 - math.frexp(float(expected[i]))[1] + 1)) >= 2**100
               for i in todo[undecided].tolist())  # fmt: skip
    signs = np.signbit(decided[~undecided]) == np.signbit(expected[todo][~undecided])
    assert signs.all()


def test_exact_from_residue_recovers_wide_integers() -> None:
    rng = random.Random(6)
    wide = [rng.randrange(-(2**124), 2**124) for _ in range(3000)] + [0, 1, -1, 2**63, -(2**63), 2**64]
    residue = np.array([_wrap(n) for n in wide], dtype=np.int64)
    approx = np.array([_ld(n + rng.randrange(-(2**59), 2**59)) for n in wide])
    y, delta = exact_from_residue(residue, approx)
    assert [int(a) + int(b) for a, b in zip(y, delta.tolist(), strict=True)] == wide


def _exact_window_sum(values: Sequence[float], squares: bool = False) -> Fraction:
    return sum((Fraction(x) ** 2 if squares else Fraction(x) for x in values), Fraction(0))


SPREADS = {  # exponents of the values: one binade (prices), returns, beyond any scale
    "one-binade": (6, 6),
    "returns": (-20, -3),
    "too-wide": (-150, 150),
}


@pytest.mark.parametrize("kind", list(SPREADS))
def test_running_sums_are_the_exact_window_sums(kind: str) -> None:
    """Random values pushed to random subsets of symbols: every window sum is exact, or flagged (ok False)
    where the window spans more bits than a scale holds; rescaled rings resum exactly."""
    rng = random.Random(kind)
    low, high = SPREADS[kind]
    n = 12
    grid_rings, wide_rings = Rings(2, n, 9), Rings(2, n, 9)
    pairs = [(0, 3), (0, 9), (1, 7)]
    grid = OneLimb(grid_rings, pairs, squares=[(0, 9)])
    wide = TwoLimb(wide_rings, pairs, absolute=[(0, 9)])
    pushed: dict[tuple[int, int], list[float]] = {(j, s): [] for j in range(2) for s in range(n)}
    everyone = Batch(np.arange(n, dtype=np.int64), n)

    def value() -> float:
        if rng.random() < 0.05:
            return 0.0
        x = rng.uniform(1, 2) * 2.0 ** rng.randrange(low, high + 1)
        return round(x, 2) if kind == "one-binade" else rng.choice([1, -1]) * x  # prices: decimals

    for step in range(300):
        idx = np.array(sorted(rng.sample(range(n), n if step % 3 else rng.randrange(1, n))), dtype=np.int64)
        batch = Batch(idx, n)
        x = np.array([[value() for _ in idx] for _ in range(2)])
        active = np.array([[rng.random() < 0.9 for _ in idx] for _ in range(2)])
        grid.push(batch, x, active)
        wide.push(batch, x, active)
        for j, i in zip(*np.nonzero(active), strict=True):
            pushed[(int(j), int(idx[i]))].append(float(x[j, i]))
        if step == 150:  # a split: every stored value times a ratio, then resummed
            factors = {2: 0.25, 5: 92.69 / 645.57}
            for rings, sums in ((grid_rings, grid), (wide_rings, wide)):
                rings.scale(0, np.array(list(factors)), np.array(list(factors.values())))
                sums.rebuild(0, list(factors))
            for s, f in factors.items():
                pushed[(0, s)] = [v * f for v in pushed[(0, s)]]
        for j, w in pairs:
            sums_grid = grid.sum(j, w, everyone)
            parts = wide.parts(j, w, everyone)
            for s in range(n):
                tail = pushed[(j, s)][-w:]
                assert grid_rings.window(j, s, w) == tail == wide_rings.window(j, s, w)
                if grid.ok[j, s]:
                    assert Fraction(int(sums_grid[s])) / TWO ** int(grid.k[j, s]) == _exact_window_sum(tail)
                if wide.ok[j, s]:
                    g, k = int(wide.g[j]), int(wide.k[j, s])
                    a, b = parts[:, s].tolist()
                    assert Fraction(a * 2**g + b) / TWO ** (k + g) == _exact_window_sum(tail)
        residue, approx = grid.sum_of_squares(0, 9, everyone)
        absolute = wide.parts(0, 9, everyone, absolute=True)
        for s in range(n):
            tail = pushed[(0, s)][-9:]
            if grid.ok[0, s]:
                exact = _exact_window_sum(tail, squares=True) * TWO ** (2 * int(grid.k[0, s]))
                assert exact.denominator == 1 and _wrap(exact.numerator) == residue[s]
                assert abs(Fraction(int(approx[s])) - exact) <= 3 * U * exact + 1
            if wide.ok[0, s]:
                g, k = int(wide.g[0]), int(wide.k[0, s])
                a, b = absolute[:, s].tolist()
                assert Fraction(a * 2**g + b) / TWO ** (k + g) == sum(
                    (abs(Fraction(v)) for v in tail), Fraction(0)
                )
    if kind == "one-binade":
        assert grid.ok.all() and wide.ok.all()
    elif kind == "returns":
        assert wide.ok.all() and not grid.ok.all()
    else:
        assert not grid.ok.all() and not wide.ok.all()  # flagged, never summed wrongly


def test_long_double_is_what_the_batch_path_needs() -> None:
    assert np.finfo(LD).nmant >= 63
    assert math.ldexp(1.0, -64) == U


def test_feature_names_match(history: dict[str, list[Bar]]) -> None:
    batch = BatchFeatures(CONFIG, ["A", "B"])
    series = relabelled(history, 2, batch.lookback + 1)
    for t in range(batch.lookback):
        ready, rows = batch.update(np.array([0, 1], dtype=np.int64), [s[t] for s in series])
    assert ready.tolist() == [0, 1] and rows.shape == (2, len(feature_names(CONFIG)))
