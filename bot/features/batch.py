"""Every symbol's features at once: SymbolFeatures' rows, bit for bit, in a few hundred numpy operations per
batch instead of a few hundred Python ones per bar.

State is a ring of recent values per series (closes, log volumes, 1-bar returns, true ranges, ...) and
symbol, with exact running sums beside it (exact.py); series of one kind share arrays, so that one numpy
operation serves all of them. A batch holds at most one bar per symbol; the symbols it leaves out keep
their state. What each row depends on is unchanged: the last `lookback` bars, through exact sums of the
same values, rounded once to the same doubles. The few things numpy cannot give exactly are computed per
value in Python: transcendental functions (math.log and friends: numpy's differ from the C library's in
the last bit for some inputs), the outlier detector's threshold (only for a bar that gaps beyond the
floor), and the rare statistic whose rounding is left open (exact.certify) or whose window does not fit
one scale (exact.OneLimb).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np

from bot.bars import Bar, utc
from bot.config import FeatureSettings
from bot.features.exact import (
    EXTENDED,
    LD,
    Batch,
    BoolArray,
    FloatArray,
    IntArray,
    LDArray,
    OneLimb,
    Rings,
    TwoLimb,
    U,
    certify,
    exact_deviation,
    exact_from_residue,
    exact_mean,
    exact_mean_square,
    exact_ppo,
    exact_ratio,
    exact_sum,
    exact_variance,
    resolve,
)
from bot.features.indicators import BollingerBands, CalendarEncoding
from bot.features.outliers import Outlier
from bot.features.symbol import SymbolFeatures, _check_bar, _extras

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_NO_TS = np.iinfo(np.int64).min
_CALENDAR_CACHE = 4096  # distinct bar times whose calendar features are kept
_Z_LIMIT = 5.0  # RollingZScore's clip
_REQUESTS = 16  # rounding requests per symbol, at most (see _statistics)
_TINY = np.finfo(np.float64).smallest_normal


def supported(settings: FeatureSettings) -> bool:
    """True when BatchFeatures can run these settings on this platform (else use SymbolFeatures)."""
    del settings  # every setting FeatureSettings accepts; only the platform matters
    return EXTENDED


def _log(x: FloatArray) -> FloatArray:
    """math.log of each value (numpy's log differs from the C library's in the last bit for some inputs)."""
    return np.fromiter(map(math.log, x.tolist()), np.float64, len(x))


def _clip(x: FloatArray, low: float, high: float) -> FloatArray:
    """indicators.clip on each value (np.clip's wrapper costs more than the two ufuncs)."""
    return np.minimum(np.maximum(x, low), high)


def _two_square(x: FloatArray) -> tuple[FloatArray, FloatArray]:
    """(p, e) with p + e = x*x exactly (Dekker's product, no fma): exact for |x| in [2**-480, 2**480] or 0,
    which a clipped log return of positive doubles always is (0, or at least about 2**-53)."""
    p = x * x
    t = x * 134217729.0  # 2**27 + 1: splits x into two halves of 26 bits
    hi = t - (t - x)
    lo = x - hi
    return p, ((hi * hi - p) + 2.0 * hi * lo) + lo * lo


class _Rounding:
    """Statistics N / den * unit (unit a power of two) for a batch of symbols, rounded to float64 together:
    one long double approximation each, certified in one pass (exact.certify); the few left open are
    decided exactly (exact.resolve) from N and den modulo 2**64, and whatever is still open, or where the
    sums do not hold (`ok` False), is recomputed from the symbol's values by the request's `exact`.
    Requests are written straight into preallocated arrays."""

    def __init__(self, symbols: IntArray, requests: int) -> None:
        self._symbols = symbols
        capacity = requests * len(symbols)
        self._n_ld: LDArray = np.empty(capacity, dtype=LD)
        self._den_ld: LDArray = np.empty(capacity, dtype=LD)
        self._unit: FloatArray = np.empty(capacity)
        self._error: FloatArray = np.empty(capacity)
        self._n_mod: IntArray = np.zeros(capacity, dtype=np.int64)
        self._den_mod: IntArray = np.empty(capacity, dtype=np.int64)
        self._exact: BoolArray = np.empty(capacity, dtype=np.bool_)
        self._ok: BoolArray = np.empty(capacity, dtype=np.bool_)
        self._bounds = [0]
        self._fallbacks: list[Callable[[int], float]] = []

    def add(
        self,
        n_ld: LDArray,
        den_ld: LDArray | int,
        unit: FloatArray | float,
        exact: Callable[[int], float],
        *,
        ok: BoolArray | bool = True,
        n_mod: IntArray | None = None,
        den_mod: IntArray | int = 1,
        error: float = 3 * U,
    ) -> int:
        """Queue N / den * unit; returns the request's handle. N is within U |N| of n_ld and den within U
        of den_ld (> 0), so that n_ld / den_ld is within 3 U of N / den (or `error`, for other bounds);
        unit is a power of two and the result scaled by it a normal double (so the scaling is exact).
        exact(symbol) gives the value from the symbol's window values; it is called where ok is False
        and where the rounding stays open."""
        a = self._bounds[-1]
        b = a + len(n_ld)
        self._n_ld[a:b] = n_ld
        self._den_ld[a:b] = den_ld
        self._unit[a:b] = unit
        self._error[a:b] = error
        self._ok[a:b] = ok
        self._exact[a:b] = n_mod is not None
        if n_mod is not None:
            self._n_mod[a:b] = n_mod
            self._den_mod[a:b] = den_mod
        self._bounds.append(b)
        self._fallbacks.append(exact)
        return len(self._bounds) - 2

    def run(self) -> list[FloatArray]:
        """Each request's values, in order."""
        bounds = self._bounds
        end = bounds[-1]
        n_ld, den_ld = self._n_ld[:end], self._den_ld[:end]
        value, uncertain = certify(n_ld / den_ld, self._error[:end])
        todo = np.flatnonzero(uncertain & self._exact[:end])
        if len(todo):
            value[todo], uncertain[todo] = resolve(
                value[todo], self._n_mod[todo], n_ld[todo], self._den_mod[todo], den_ld[todo]
            )
        value *= self._unit[:end]  # exact unless the result is subnormal: then it is recomputed too
        redo = np.flatnonzero(uncertain | ~self._ok[:end] | ((np.abs(value) < _TINY) & (value != 0)))
        if len(redo):
            requests = np.searchsorted(bounds, redo, side="right") - 1
            size = len(self._symbols)
            for pos, r in zip(redo.tolist(), requests.tolist(), strict=True):
                value[pos] = self._fallbacks[r](int(self._symbols[(pos - bounds[r]) % size]))
        return [value[a:b] for a, b in itertools.pairwise(bounds)]


class BatchFeatures:
    """Features of a fixed set of symbols, fed one bar per symbol per call (any subset of the symbols).

    Symbols are addressed by index (0 .. n-1, the order given); `update` takes their bars, `load` takes
    over a symbol from a SymbolFeatures fed the same bars before.
    """

    def __init__(self, settings: FeatureSettings, symbols: Sequence[str]) -> None:
        if not supported(settings):
            raise ValueError("the batch feature path needs a 64-bit long double significand")
        self.lookback = SymbolFeatures(settings).lookback
        n = len(symbols)
        self._n = n
        self._extras = _extras(settings)
        extras = set(self._extras)
        self._limit = settings.return_clip
        self._lags = tuple(settings.return_lags)
        zw, rw, vw = settings.zscore_window, settings.rsi_window, settings.volatility_window
        self._zw, self._rw, self._vw = zw, rw, vw
        self._macd = (
            (settings.macd_fast, settings.macd_slow, settings.macd_signal) if "macd" in extras else None
        )
        # Series on a grid (prices, volumes): each value one int64 at the series' scale.
        grid = ["close", "logvol"]
        grid += ["volume"] if {"vwap", "obv"} & extras else []
        grid += ["tr"] if "atr" in extras else []
        grid += ["signed"] if "obv" in extras else []
        self._one = {name: j for j, name in enumerate(grid)}
        slow = self._macd[1] if self._macd else 0
        self._grid = Rings(len(grid), n, max(self._lags[-1] + 1, zw, vw, slow, 2))
        windows = [(0, zw), (1, zw)]
        windows += [(0, self._macd[0]), (0, slow)] if self._macd else []
        windows += [(self._one[name], zw) for name in ("volume", "signed") if name in self._one]
        windows += [(self._one["tr"], vw)] if "tr" in self._one else []
        self._grid_sums = OneLimb(self._grid, windows, squares=[(0, zw), (1, zw)])
        # Series of full-precision values over many binades: two int64 each. The returns' squares are
        # kept as two doubles, r*r = sq_hi + sq_lo exactly, for the realized volatility.
        wide = ["ret", "sq_hi", "sq_lo"]
        wide += (["dollars"] if "vwap" in extras else []) + (["lines"] if self._macd else [])
        self._two = {name: j for j, name in enumerate(wide)}
        signal = self._macd[2] if self._macd else 0
        self._wide = Rings(len(wide), n, max(rw, vw, zw, signal))
        wide_windows = [(0, rw), (1, vw), (2, vw)]
        wide_windows += [(self._two["dollars"], zw)] if "dollars" in self._two else []
        wide_windows += [(self._two["lines"], signal)] if self._macd else []
        self._wide_sums = TwoLimb(self._wide, wide_windows, absolute=[(0, rw)])
        self._outlier_k = settings.outlier_k
        self._outlier_floor = settings.outlier_floor
        self._det = Rings(1, n, vw) if settings.outlier_k is not None else None
        self._prev_raw: FloatArray = np.full(n, np.nan)  # the detector's previous close, never rescaled
        self._seen: IntArray = np.zeros(n, dtype=np.int64)
        self._last_us: IntArray = np.full(n, _NO_TS, dtype=np.int64)
        self._last_ts = np.full(n, None, dtype=object)  # datetimes, for SymbolFeatures' error messages
        self._last_outlier: list[Outlier | None] = [None] * n
        self._calendar: dict[datetime, tuple[float, float, float, float]] = {}
        self._encoding = CalendarEncoding()
        self.flagged: dict[int, Outlier] = {}  # the outliers of the last update, by symbol index

    def last_outlier(self, symbol: int) -> Outlier | None:
        """The latest outlier flagged for the symbol at this index (SymbolFeatures.last_outlier)."""
        return self._last_outlier[symbol]

    def last_ts(self, symbol: int) -> datetime | None:
        """The open time of the last bar taken for the symbol at this index."""
        ts: datetime | None = self._last_ts[symbol]
        return ts

    def load(self, symbol: int, features: SymbolFeatures) -> None:
        """Carry on from `features` for the symbol at this index: its next rows are the ones `features`
        would have given (the symbol's batch state so far is replaced)."""
        history = features.history()
        self._seen[symbol] = history.seen
        self._last_ts[symbol] = history.last_ts
        self._last_us[symbol] = _NO_TS if history.last_ts is None else (utc(history.last_ts) - _EPOCH) // _US
        self._last_outlier[symbol] = history.last_outlier
        grid = {"close": history.closes, "logvol": history.log_volumes, "volume": history.volumes,
                "tr": history.true_ranges, "signed": history.signed_volumes}  # fmt: skip
        for name, j in self._one.items():
            self._grid.load(j, symbol, grid[name])
            self._grid_sums.rebuild(j, [symbol])
        sq_hi, sq_lo = _two_square(np.asarray(history.returns, dtype=np.float64))
        wide = {"ret": history.returns, "sq_hi": sq_hi.tolist(), "sq_lo": sq_lo.tolist(),
                "dollars": history.dollars, "lines": history.lines}  # fmt: skip
        for name, j in self._two.items():
            self._wide.load(j, symbol, wide[name])
            self._wide_sums.rebuild(j, [symbol])
        if self._det is not None:
            self._det.load(0, symbol, history.detector_returns)
            prev = history.detector_prev_close
            self._prev_raw[symbol] = np.nan if prev is None else prev

    def update(self, idx: IntArray, bars: Sequence[Bar]) -> tuple[IntArray, FloatArray]:
        """Take bars[i] for symbol idx[i] (distinct symbols); (positions in bars that gave a row, their
        rows, float64, in feature_names order).

        ValueError, with no state changed, for a bad bar (as SymbolFeatures.update).
        """
        # Divisions by zero and NaNs below are in lanes that np.where then discards.
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return self._update(Batch(idx, self._n), bars)

    # --- one batch ------------------------------------------------------------------------------------

    def _update(self, batch: Batch, bars: Sequence[Bar]) -> tuple[IntArray, FloatArray]:
        sel = batch.sel
        o = np.array([b.open for b in bars], dtype=np.float64)
        h = np.array([b.high for b in bars], dtype=np.float64)
        lo = np.array([b.low for b in bars], dtype=np.float64)
        c = np.array([b.close for b in bars], dtype=np.float64)
        v = np.array([b.volume for b in bars], dtype=np.float64)
        stamps = [b.ts for b in bars]
        distinct, codes = self._times(stamps)  # each distinct open time once: usually one per batch
        ts_us = distinct[codes]
        self._validate(batch, bars, (o, h, lo, c, v), ts_us)
        grid = self._grid
        has_prev = grid.count[0, sel] > 0
        every = bool(has_prev.all())
        stepping = batch if every else batch.subset(np.flatnonzero(has_prev), self._n)  # with a 1-bar return
        c_step = c if every else c[has_prev]
        raw = _log(c_step / self._prev_raw[stepping.sel]) if self._det is not None else None
        flagged = self._detect(stepping, bars, has_prev, o, raw)  # may raise: nothing has changed yet
        self.flagged = flagged
        # --- state moves from here on ---
        self._last_us[sel] = ts_us
        last = np.empty(len(bars), dtype=object)
        last[:] = stamps
        self._last_ts[sel] = last
        if flagged:
            self._rescale(flagged)
        if self._det is not None and raw is not None:
            self._det.push(stepping, _clip(raw, -self._limit, self._limit)[None], None)
            self._prev_raw[sel] = c
        prev = grid.back(0, stepping, 1)  # the previous close, rescaled if this bar is an outlier
        if raw is None or flagged:
            step = _clip(_log(c_step / prev), -self._limit, self._limit)
        else:
            step = _clip(raw, -self._limit, self._limit)  # the detector's return: same close, same prev
        seen = self._seen[sel] + 1
        self._seen[sel] = seen
        ready = np.flatnonzero(seen >= self.lookback)
        rows = batch.subset(ready, self._n)
        everyone = len(ready) == len(batch)
        # The returns over the lags and the bar's log range: logs of ratios, from closes before this one.
        lags = [lag for lag in self._lags if lag != 1]
        hr, lr, cr = (h, lo, c) if everyone else (h[ready], lo[ready], c[ready])
        ratios = [cr / grid.back(0, rows, lag) for lag in lags]
        logs = _log(np.concatenate([*ratios, hr / lr])) if len(ready) else np.empty(0)
        if not every:
            full = np.zeros(len(batch))
            full[has_prev] = step
            step_all = full
        else:
            step_all = step
        self._push(batch, None if every else has_prev, (h, lo, c, v), prev, step)
        if not len(ready):
            return ready, np.empty((0, 0))
        r = len(ready)
        by_lag = {
            lag: _clip(logs[i * r : (i + 1) * r], -self._limit, self._limit) for i, lag in enumerate(lags)
        }
        step_ready = step_all if everyone else step_all[ready]
        columns = [step_ready if lag == 1 else by_lag[lag] for lag in self._lags]
        columns += self._columns(rows, (hr, lr, cr), _clip(logs[-r:], 0.0, self._limit),
                                 codes if everyone else codes[ready])  # fmt: skip
        return ready, np.column_stack(columns)

    def _times(self, stamps: Sequence[datetime]) -> tuple[IntArray, IntArray]:
        """(microseconds since the epoch of each distinct open time, each bar's index into them); the
        distinct times are kept in self._stamps for the calendar features."""
        distinct = dict.fromkeys(stamps)
        keys = list(distinct)
        self._stamps = keys
        micros = np.fromiter(((utc(ts) - _EPOCH) // _US for ts in keys), np.int64, len(keys))
        if len(keys) == 1:  # every bar of the batch opened at one time: the usual case
            return micros, np.zeros(len(stamps), dtype=np.int64)
        for i, ts in enumerate(keys):
            distinct[ts] = i
        return micros, np.fromiter((distinct[ts] for ts in stamps), np.int64, len(stamps))

    def _validate(
        self, batch: Batch, bars: Sequence[Bar], cols: tuple[FloatArray, ...], ts_us: IntArray
    ) -> None:
        """SymbolFeatures' checks of each bar, and its message for the first that fails them."""
        _, h, lo, c, v = cols
        bad = ~np.isfinite(np.stack(cols)).all(axis=0) | (lo <= 0) | (c <= 0) | (h < lo) | (v < 0)
        bad |= ts_us <= self._last_us[batch.sel]
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            _check_bar(bars[i], self._last_ts[int(batch.idx[i])])  # raises with SymbolFeatures' message
            raise ValueError(f"{bars[i].symbol} {bars[i].ts.isoformat()}: bad bar")

    def _detect(
        self, step: Batch, bars: Sequence[Bar], has_prev: BoolArray, o: FloatArray, raw: FloatArray | None
    ) -> dict[int, Outlier]:
        """GapOutlierDetector's decisions for the batch's symbols with a previous bar (`step`), before its
        returns take this bar's."""
        det = self._det
        if det is None or raw is None or not len(step):
            return {}
        pos = np.flatnonzero(has_prev)
        prev = self._prev_raw[step.sel]
        gap = _log(o[pos] / prev)  # ValueError for an open <= 0, as the detector: nothing changed yet
        floor = self._outlier_floor
        candidates = (np.abs(gap) > floor) & (det.count[0, step.sel] >= self._vw) & np.isfinite(gap)
        flagged: dict[int, Outlier] = {}
        if not candidates.any():
            return flagged
        assert self._outlier_k is not None
        for j in np.flatnonzero(candidates).tolist():  # a gap beyond the floor: rare, decided exactly
            s = int(step.idx[j])
            threshold = max(floor, self._outlier_k * math.sqrt(exact_variance(det.window(0, s, self._vw), 1)))
            g, move = float(gap[j]), float(raw[j])
            if abs(g) > threshold and abs(move) > threshold and (g > 0) == (move > 0):
                bar = bars[int(pos[j])]
                flagged[s] = Outlier(bar.symbol, bar.ts, bar.open / float(prev[j]), g, move, threshold)
        return flagged

    def _rescale(self, flagged: dict[int, Outlier]) -> None:
        """SymbolFeatures._rescale for each flagged symbol: stored prices times the outlier's ratio."""
        symbols = np.fromiter(flagged, np.int64, len(flagged))
        factor = np.array([o.ratio for o in flagged.values()])
        prices: list[tuple[Rings, OneLimb | TwoLimb, int]] = [
            (self._grid, self._grid_sums, self._one[name]) for name in ("close", "tr") if name in self._one
        ]
        if "dollars" in self._two:
            prices.append((self._wide, self._wide_sums, self._two["dollars"]))
        for rings, _, j in prices:
            if not np.isfinite(rings.values[j][:, symbols] * factor).all():
                raise ValueError(f"rescaling by {factor.tolist()!r} leaves the float range")
        for rings, sums, j in prices:
            rings.scale(j, symbols, factor)
            sums.rebuild(j, symbols.tolist())
        for s, outlier in flagged.items():
            self._last_outlier[s] = outlier

    def _push(
        self,
        batch: Batch,
        has_prev: BoolArray | None,
        cols: tuple[FloatArray, ...],
        prev: FloatArray,
        step: FloatArray,
    ) -> None:
        """This bar's values into every series: has_prev None means every symbol has a previous close."""
        h, lo, c, v = cols
        one, two = self._one, self._two
        x = np.empty((len(one), len(batch)))
        x[0] = c
        x[1] = np.fromiter(map(math.log1p, v.tolist()), np.float64, len(v))
        if "volume" in one:
            x[one["volume"]] = v
        active = None
        if "tr" in one or "signed" in one:
            on = slice(None) if has_prev is None else has_prev
            hp, lp, cp, vp = h[on], lo[on], c[on], v[on]
            if "tr" in one:
                x[one["tr"]] = 0.0
                x[one["tr"], on] = np.maximum(hp, prev) - np.minimum(lp, prev)
            if "signed" in one:
                x[one["signed"]] = 0.0
                x[one["signed"], on] = np.where(cp > prev, vp, np.where(cp < prev, -vp, 0.0))
            if has_prev is not None:  # a first bar has no true range and no signed volume
                active = np.ones((len(one), len(batch)), dtype=np.bool_)
                active[[one[name] for name in ("tr", "signed") if name in one]] = has_prev
        self._grid_sums.push(batch, x, active)
        # The wide series: returns and their squares, dollars, and (from the new closes' sums) MACD lines.
        y = np.zeros((len(two), len(batch)))
        wide_active = None
        sq_hi, sq_lo = _two_square(step)
        if has_prev is None:
            y[0], y[1], y[2] = step, sq_hi, sq_lo
        else:
            y[0, has_prev], y[1, has_prev], y[2, has_prev] = step, sq_hi, sq_lo
            wide_active = np.ones((len(two), len(batch)), dtype=np.bool_)
            wide_active[:3] = has_prev
        if "dollars" in two:
            y[two["dollars"]] = (h + lo + c) / 3.0 * v
        if self._macd is not None:
            line_on = self._grid.count[0, batch.sel] >= self._macd[1]
            if line_on.all():
                y[two["lines"]] = self._lines(batch)
            else:
                on_idx = np.flatnonzero(line_on)
                y[two["lines"], on_idx] = self._lines(batch.subset(on_idx, self._n))
                if wide_active is None:
                    wide_active = np.ones((len(two), len(batch)), dtype=np.bool_)
                wide_active[two["lines"]] = line_on
        self._wide_sums.push(batch, y, wide_active)

    def _lines(self, batch: Batch) -> FloatArray:
        """FiniteMACD's line for these symbols (slow window full), from the closes' exact sums."""
        assert self._macd is not None
        fast, slow, _ = self._macd
        sums = self._grid_sums
        if not len(batch):
            return np.empty(0)
        sf, ss = sums.sum(0, fast, batch), sums.sum(0, slow, batch)
        # line = (slow * Sf - fast * Ss) / (fast * Ss): the numerator is exact modulo 2**64 and its long
        # double approximation is within a few units, which pins it down; then one rounding as usual.
        sfl, ssl = sf.astype(LD), ss.astype(LD)
        n_mod = slow * sf - fast * ss
        y, delta = exact_from_residue(n_mod, slow * sfl - fast * ssl)
        todo = _Rounding(batch.idx, 1)
        todo.add(
            y + delta.astype(LD),
            fast * ssl,
            1.0,
            self._ppo,
            ok=sums.ok[0, batch.sel],
            n_mod=n_mod,
            den_mod=fast * ss,
        )
        return todo.run()[0]

    def _ppo(self, symbol: int) -> float:
        """One symbol's MACD line from its closes, exactly (FiniteMACD's line)."""
        assert self._macd is not None
        fast, slow, _ = self._macd
        return exact_ppo(self._grid.window(0, symbol, fast), self._grid.window(0, symbol, slow))

    # --- rows -----------------------------------------------------------------------------------------

    def _statistics(self, rows: Batch, close: FloatArray) -> dict[str, FloatArray]:
        """Every rounded window statistic the rows need, for the symbols `rows` (close: their closes),
        each the correctly rounded value SymbolFeatures' exact sums give."""
        sel, n = rows.sel, len(rows)
        gs, ws, grid, wide = self._grid_sums, self._wide_sums, self._grid, self._wide
        one, two = self._one, self._two
        zw, rw, vw = self._zw, self._rw, self._vw
        todo = _Rounding(rows.idx, _REQUESTS)
        asked: dict[str, int] = {}
        out: dict[str, FloatArray] = {}

        # Means and the close's deviation from its mean: int64 numerators over small integers.
        ok_c, ok_l = gs.ok[0, sel], gs.ok[1, sel]
        uc, ul = gs.unit[0, sel], gs.unit[1, sel]
        s1c, s1l = gs.sum(0, zw, rows), gs.sum(1, zw, rows)
        asked["mean_close"] = todo.add(
            s1c.astype(LD),
            zw,
            uc,
            lambda s: exact_mean(grid.window(0, s, zw)),
            ok=ok_c,
            n_mod=s1c,
            den_mod=zw,
        )
        asked["mean_logvol"] = todo.add(
            s1l.astype(LD),
            zw,
            ul,
            lambda s: exact_mean(grid.window(1, s, zw)),
            ok=ok_l,
            n_mod=s1l,
            den_mod=zw,
        )
        if "bollinger" in self._extras:  # (zw a - S1) / zw, the close an integer a in its window
            dev = zw * np.where(ok_c, close * gs.scale[0, sel], 0.0).astype(np.int64) - s1c
            asked["dev_close"] = todo.add(
                dev.astype(LD),
                zw,
                uc,
                lambda s: _deviation(grid.window(0, s, zw)),
                ok=ok_c,
                n_mod=dev,
                den_mod=zw,
            )
        if "tr" in one:
            jt = one["tr"]
            s_tr = gs.sum(jt, vw, rows)
            asked["mean_tr"] = todo.add(
                s_tr.astype(LD),
                vw,
                gs.unit[jt, sel],
                lambda s: exact_mean(grid.window(jt, s, vw)),
                ok=gs.ok[jt, sel],
                n_mod=s_tr,
                den_mod=vw,
            )

        # Variances: N = n S2 - S1**2 exactly, from its residue modulo 2**64 and an approximation of it
        # within 6 U n S2 (S1**2 <= n S2), which exact_from_residue needs below 2**61.
        res_c, s2c = gs.sum_of_squares(0, zw, rows)
        res_l, s2l = gs.sum_of_squares(1, zw, rows)
        s1, s2 = np.concatenate((s1c, s1l)), np.concatenate((s2c, s2l))
        s1ld = s1.astype(LD)
        n_mod = zw * np.concatenate((res_c, res_l)) - s1 * s1
        fits = np.concatenate((ok_c, ok_l)) & (7 * U * zw * s2 < 2.0**60)
        y, delta = exact_from_residue(n_mod, zw * s2 - s1ld * s1ld)
        big_n = y + delta.astype(LD)  # N correctly rounded
        for j, name, part, unit in (
            (0, "var1_close", slice(0, n), uc),
            (1, "var1_logvol", slice(n, None), ul),
        ):
            asked[name] = todo.add(
                big_n[part],
                zw * (zw - 1),
                unit * unit,
                functools.partial(_sample_variance, grid, j, zw),
                ok=fits[part],
                n_mod=n_mod[part],
                den_mod=zw * (zw - 1),
            )
        if "bollinger" in self._extras:
            asked["var0_close"] = todo.add(
                big_n[:n],
                zw * zw,
                uc * uc,
                lambda s: exact_variance(grid.window(0, s, zw), 0),
                ok=fits[:n],
                n_mod=n_mod[:n],
                den_mod=zw * zw,
            )

        # RSI: exact sums of the returns and of their absolute values.
        ok_r = ws.ok[0, sel]
        ur = ws.unit[0, sel] * 2.0 ** -int(ws.g[0])
        net_mod, net_ld = ws.exact(0, rw, rows)
        moved_mod, moved_ld = ws.exact(0, rw, rows, absolute=True)
        asked["net"] = todo.add(
            net_ld, 1, ur, lambda s: exact_sum(wide.window(0, s, rw)), ok=ok_r, n_mod=net_mod
        )
        asked["moved"] = todo.add(
            moved_ld,
            1,
            ur,
            lambda s: exact_sum([abs(x) for x in wide.window(0, s, rw)]),
            ok=ok_r,
            n_mod=moved_mod,
        )

        # Realized volatility: exact sums of the squares' two halves, added in long double (within 3.5 U
        # all told); no cheap exact form of it, so a value left open is recomputed.
        _, p_ld = ws.exact(1, vw, rows)
        _, e_ld = ws.exact(2, vw, rows)
        up = (ws.unit[1, sel] * 2.0 ** -int(ws.g[1])).astype(LD)
        ue = (ws.unit[2, sel] * 2.0 ** -int(ws.g[2])).astype(LD)
        asked["mean_square"] = todo.add(
            p_ld * up + e_ld * ue,
            vw,
            1.0,
            lambda s: exact_mean_square(wide.window(0, s, vw)),
            ok=ws.ok[1, sel] & ws.ok[2, sel],
            error=3.5 * U,
        )

        if self._macd is not None:  # the signal (mean of the lines) and hist = (ns line - S) / ns
            jl, ns = two["lines"], self._macd[2]
            gl = int(ws.g[jl])
            ulines = ws.unit[jl, sel] * 2.0**-gl
            ok_lines = ws.ok[jl, sel]
            sig_mod, sig_ld = ws.exact(jl, ns, rows)
            asked["signal"] = todo.add(
                sig_ld,
                ns,
                ulines,
                lambda s: exact_mean(wide.window(jl, s, ns)),
                ok=ok_lines,
                n_mod=sig_mod,
                den_mod=ns,
            )
            la, lb, _ = ws.split(wide.back(jl, rows, 1), ws.scale[jl, sel], np.full(n, jl))  # in its window
            p = ws.parts(jl, ns, rows)
            ha, hb = ns * la - p[0], ns * lb - p[1]
            asked["hist"] = todo.add(
                ha.astype(LD) * LD(2.0**gl) + hb.astype(LD),
                ns,
                ulines,
                lambda s: _deviation(wide.window(jl, s, ns)),
                ok=ok_lines,
                n_mod=(ha << gl) + hb,
                den_mod=ns,
            )

        if "volume" in one:  # VWAP and OBV: ratios to the window's volume
            jv = one["volume"]
            volume = gs.sum(jv, zw, rows)
            # No trade in the window (where the sums hold; elsewhere the exact ratio says NaN).
            out["no_volume"] = ((volume == 0) & gs.ok[jv, sel]).astype(np.float64)
            volume = np.where(volume == 0, 1, volume)  # no trade in the window: the ratio goes unused
            vol_ld = volume.astype(LD)
            kv = gs.k[jv, sel]
            if "dollars" in two:  # dollars / volume, the two scales 2**(kv - kd - g) apart
                jd = two["dollars"]
                shift = kv - ws.k[jd, sel] - int(ws.g[jd])
                in_range = np.abs(shift) < 1000  # 2**shift a normal double
                d_mod, d_ld = ws.exact(jd, zw, rows)
                asked["vwap"] = todo.add(
                    d_ld,
                    vol_ld,
                    np.ldexp(1.0, np.where(in_range, shift, 0)),
                    lambda s: _ratio_or_nan(wide.window(jd, s, zw), grid.window(jv, s, zw)),
                    ok=in_range & ws.ok[jd, sel] & gs.ok[jv, sel],
                    n_mod=d_mod,
                    den_mod=volume,
                )
            if "signed" in one:
                js = one["signed"]
                signed = gs.sum(js, zw, rows)
                asked["obv"] = todo.add(
                    signed.astype(LD),
                    vol_ld,
                    gs.scale[jv, sel] * gs.unit[js, sel],
                    lambda s: _ratio_or_nan(grid.window(js, s, zw), grid.window(jv, s, zw)),
                    ok=gs.ok[js, sel] & gs.ok[jv, sel],
                    n_mod=signed,
                    den_mod=volume,
                )

        results = todo.run()
        out.update({name: results[handle] for name, handle in asked.items()})
        return out

    def _columns(
        self, rows: Batch, prices: tuple[FloatArray, ...], log_range: FloatArray, codes: IntArray
    ) -> list[FloatArray]:
        """Every column after the returns, for the symbols `rows` (prices: their high, low, close)."""
        h, lo, c = prices
        stats = self._statistics(rows, c)
        z_close = _zscore(c, stats["mean_close"], stats["var1_close"])
        z_logvol = _zscore(self._grid.back(1, rows, 1), stats["mean_logvol"], stats["var1_logvol"])
        moved = stats["moved"]
        rsi = np.where(moved == 0.0, 0.0, stats["net"] / moved)
        span = h - lo
        loc = np.where(span <= 0.0, 0.0, _clip((c - lo) / span - 0.5, -0.5, 0.5))
        columns = [z_close, z_logvol, rsi, np.sqrt(stats["mean_square"]), log_range, loc]
        for name in self._extras:
            if name == "macd":
                columns += [self._wide.back(self._two["lines"], rows, 1), stats["signal"], stats["hist"]]
            elif name == "bollinger":
                std = np.sqrt(stats["var0_close"])
                span = 2.0 * BollingerBands.bands * std
                flat = std == 0.0  # the exact variance is 0: a flat window
                columns += [np.where(flat, 0.5, 0.5 + stats["dev_close"] / span),
                            np.where(flat, 0.0, span / stats["mean_close"])]  # fmt: skip
            elif name == "atr":
                columns.append(stats["mean_tr"] / c)
            elif name == "vwap":
                # A window that traded nothing has no VWAP (its exact fallback says NaN): distance 0.
                zero = (stats["no_volume"] != 0) | np.isnan(stats["vwap"])
                columns.append(np.where(zero, 0.0, _log(np.where(zero, 1.0, c / stats["vwap"]))))
            elif name == "obv":
                zero = (stats["no_volume"] != 0) | np.isnan(stats["obv"])
                columns.append(np.where(zero, 0.0, stats["obv"]))
            elif name == "time":
                columns += self._time(codes)
        return columns

    def _time(self, codes: IntArray) -> list[FloatArray]:
        """CalendarEncoding of each ready bar, computed once per distinct open time (and cached)."""
        cache = self._calendar
        table = []
        for ts in self._stamps:
            values = cache.get(ts)
            if values is None:
                if len(cache) >= _CALENDAR_CACHE:
                    cache.clear()
                # The encoding reads only the open time; any bar with it will do.
                values = cache[ts] = self._encoding.update(Bar("", ts, 1.0, 1.0, 1.0, 1.0, 0.0))
            table.append(values)
        return list(np.array(table)[codes].T)


def _zscore(x: FloatArray, mean: FloatArray, var: FloatArray) -> FloatArray:
    """RollingZScore's value from its exact mean and sample variance: 0 for a flat window, clipped."""
    std = np.sqrt(var)  # IEEE sqrt: correctly rounded, as math.sqrt
    return _clip(np.where(std == 0.0, 0.0, (x - mean) / std), -_Z_LIMIT, _Z_LIMIT)


def _sample_variance(rings: Rings, j: int, window: int, symbol: int) -> float:
    """The sample variance of series j of one symbol over its window, exactly rounded."""
    return exact_variance(rings.window(j, symbol, window), 1)


def _deviation(window: list[float]) -> float:
    """The window's last value minus its mean, correctly rounded (ExactRollingSum.deviation)."""
    return exact_deviation(window[-1], window)


def _ratio_or_nan(numerator: list[float], denominator: list[float]) -> float:
    """sum(numerator) / sum(denominator) correctly rounded; NaN where the denominator sums to 0."""
    return math.nan if exact_sum(denominator) == 0.0 else exact_ratio(numerator, denominator)
