"""Bars in, feature rows and model-ready windows out, for a fixed set of symbols: what live trading runs.

Two paths give the same rows, bit for bit: SymbolFeatures (symbol.py), one symbol at a time, cheapest for
a bar or a handful; BatchFeatures (batch.py), every symbol of a batch in one pass, from about
`BATCH_FROM` symbols on. A symbol starts on the per-symbol path (a warm-up feeds one symbol's history at
a time) and moves to the batch path, once and for good, with the first pass that has enough symbols: its
state is handed over (BatchFeatures.load), so its rows carry on unchanged. Where BatchFeatures cannot run
(no 64-bit long double significand on this platform) every symbol stays on the per-symbol path.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from datetime import datetime

import numpy as np
import numpy.typing as npt

from bot.bars import Bar
from bot.config import FeatureSettings
from bot.features.batch import BatchFeatures, supported
from bot.features.outliers import Outlier
from bot.features.symbol import SymbolFeatures, _check_bar, feature_matrix, feature_names

__all__ = ["BATCH_FROM", "FeatureEngine", "SymbolFeatures", "feature_matrix", "feature_names"]

BATCH_FROM = 16  # symbols in one pass from which the batch path is the cheaper (measured: bench/features.py)

Int64Array = npt.NDArray[np.int64]


class FeatureEngine:
    """Per-symbol features plus a ring buffer of the last `window` rows each, ready for the model.

    O(n_features) per bar: a row is written in place (twice, at i and i + window, so that every window is
    one contiguous slice), nothing is shifted. `update_many` takes a whole batch in one pass; `update`
    is the same for one bar. `windows` stacks the windows of many symbols.
    """

    def __init__(
        self, settings: FeatureSettings, window: int, symbols: Iterable[str], batch: bool | None = None
    ) -> None:
        """`batch`: None (default) picks the path per pass, as the module docstring says; False keeps to
        the per-symbol path; True puts every symbol on the batch path from the start (ValueError where
        BatchFeatures cannot run)."""
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._settings = settings
        self._names = feature_names(settings)
        self._window = window
        self._index: dict[str, int] = {}
        for symbol in symbols:
            if symbol in self._index:
                raise ValueError(f"symbol {symbol!r} given twice")
            self._index[symbol] = len(self._index)
        self._lookback = SymbolFeatures(settings).lookback
        n, width = len(self._index), len(self._names)
        if batch and not supported(settings):
            raise ValueError("the batch feature path cannot run on this platform (long double too short)")
        use_batch = supported(settings) if batch is None else batch
        self._batch = BatchFeatures(settings, list(self._index)) if use_batch else None
        # Symbols on the per-symbol path, by index; the rest are on the batch path.
        self._scalar: dict[int, SymbolFeatures] = (
            {} if batch else {i: SymbolFeatures(settings) for i in range(n)}
        )
        self._rows: npt.NDArray[np.float32] = np.zeros((n, 2 * window, width), dtype=np.float32)
        self._next: Int64Array = np.zeros(n, dtype=np.int64)  # next row's slot: also the oldest row's
        self._filled: Int64Array = np.zeros(n, dtype=np.int64)
        self._flagged: dict[tuple[int, datetime], Outlier] = {}  # by (symbol index, bar time): see flagged

    @property
    def names(self) -> tuple[str, ...]:
        """Feature names, the columns of every window."""
        return self._names

    @property
    def symbols(self) -> tuple[str, ...]:
        """The symbols this engine tracks."""
        return tuple(self._index)

    @property
    def window_size(self) -> int:
        """Rows per window."""
        return self._window

    @property
    def lookback(self) -> int:
        """Bars before the first feature row."""
        return self._lookback

    @property
    def warmup_bars(self) -> int:
        """Bars needed from a cold start until the first full window (lookback + window - 1)."""
        return self._lookback + self._window - 1

    def batched(self, symbol: str) -> bool:
        """True when `symbol` is on the batch path (see the module docstring)."""
        return self._column(symbol) not in self._scalar

    def update(self, bar: Bar) -> bool:
        """Take the next bar of its symbol; True when that symbol's window is full (ready to predict)."""
        i = self._column(bar.symbol)
        features = self._scalar.get(i)
        if features is None:  # on the batch path
            return self.update_many((bar,))[0]
        self._flagged.clear()
        return self._take_one(i, features, bar)

    def update_many(self, bars: Sequence[Bar]) -> list[bool]:
        """Take a batch of bars, any symbols, one or more bars each (each symbol's in time order); for
        each bar, True when its symbol's window is full after it: `update` on each bar in turn, in one pass
        per bar of a symbol instead (the k-th bar of every symbol in pass k).

        KeyError for an unknown symbol and ValueError for a bad bar (see SymbolFeatures.update), both with
        no state changed.
        """
        idx = self._columns([bar.symbol for bar in bars])
        self._flagged.clear()
        if len(set(idx)) == len(idx):
            if len(idx) > 1 and (self._batch is None or len(idx) < BATCH_FROM):
                self._precheck(bars, idx)  # the pass may run per bar: check all before any goes in
            return self._take(idx, bars)
        # A symbol more than once (a warm-up, a backfill): check everything, then pass by pass.
        self._precheck(bars, idx)
        passes: list[list[int]] = []
        seen: dict[int, int] = {}
        for pos, i in enumerate(idx):
            k = seen.get(i, 0)
            seen[i] = k + 1
            if k == len(passes):
                passes.append([])
            passes[k].append(pos)
        out = [False] * len(bars)
        for positions in passes:
            ready = self._take([idx[p] for p in positions], [bars[p] for p in positions])
            for p, r in zip(positions, ready, strict=True):
                out[p] = r
        return out

    def flagged(self, bar: Bar) -> Outlier | None:
        """The outlier `bar` was flagged as (and adjusted for) in the latest `update` or `update_many`,
        None if it was not: unlike `last_outlier`, exact for each bar of a batch that holds several bars of
        one symbol."""
        return self._flagged.get((self._column(bar.symbol), bar.ts))

    def last_outlier(self, symbol: str) -> Outlier | None:
        """The latest outlier bar flagged for `symbol` (see SymbolFeatures.last_outlier)."""
        i = self._column(symbol)
        if i in self._scalar:
            return self._scalar[i].last_outlier
        assert self._batch is not None
        return self._batch.last_outlier(i)

    def ready(self, symbol: str) -> bool:
        """True when `symbol` has a full window."""
        return bool(self._filled[self._column(symbol)] == self._window)

    def window(self, symbol: str) -> npt.NDArray[np.float32]:
        """A copy of the latest window, oldest row first, shape (window_size, len(names)), float32.

        ValueError while the window is not yet full.
        """
        i = self._column(symbol)
        if self._filled[i] < self._window:
            self._check_full(np.asarray([i]))  # raises
        start = int(self._next[i])
        return self._rows[i, start : start + self._window].copy()

    def windows(self, symbols: Sequence[str], copy: bool = True) -> npt.NDArray[np.float32]:
        """The latest windows of these symbols, stacked: (len(symbols), window_size, len(names)), float32,
        in one gather. ValueError if any window is not yet full.

        With copy=False, when `symbols` is every symbol in order and their windows end in the same slot
        (every symbol updated together: the usual case), a read-only view of the ring buffer instead of a
        copy: valid until the next update, which overwrites it. Callers that keep windows must copy them.
        """
        idx = np.asarray(self._columns(symbols), dtype=np.int64)
        self._check_full(idx)
        start = self._next[idx]
        first = int(start[0]) if len(start) else 0
        if len(start) and (start == first).all():  # every window ends in the same slot: the usual case
            if len(idx) == len(self._index) and (idx == np.arange(len(idx))).all():
                view = self._rows[:, first : first + self._window]
                if copy:
                    return view.copy()
                view.flags.writeable = False
                return view
            same: npt.NDArray[np.float32] = self._rows[idx, first : first + self._window]  # whole blocks
            return same
        out: npt.NDArray[np.float32] = self._rows[idx[:, None], start[:, None] + np.arange(self._window)]
        return out

    # --- internals ------------------------------------------------------------------------------------

    def _column(self, symbol: str) -> int:
        try:
            return self._index[symbol]
        except KeyError:
            raise KeyError(
                f"unknown symbol {symbol!r}: this feature engine tracks {sorted(self._index)}"
            ) from None

    def _columns(self, symbols: Sequence[str]) -> list[int]:
        if len(symbols) == 1:
            return [self._column(symbols[0])]
        try:
            return list(operator.itemgetter(*symbols)(self._index)) if symbols else []
        except KeyError:
            return [self._column(s) for s in symbols]  # raises, naming the unknown symbol

    def _check_full(self, idx: Int64Array) -> None:
        short = idx[self._filled[idx] < self._window]
        if len(short):
            symbol = self.symbols[int(short[0])]
            filled = int(self._filled[short[0]])
            raise ValueError(
                f"{symbol}: window not full yet ({filled} of {self._window} rows; "
                f"a cold start needs {self.warmup_bars} bars)"
            )

    def _precheck(self, bars: Sequence[Bar], idx: Sequence[int]) -> None:
        """Every bar's checks, each against the one before it of its symbol, before any state changes."""
        last = {i: self._last_ts(i) for i in set(idx)}
        for i, bar in zip(idx, bars, strict=True):
            _check_bar(bar, last[i])
            last[i] = bar.ts

    def _last_ts(self, i: int) -> datetime | None:
        if i in self._scalar:
            return self._scalar[i].last_ts
        assert self._batch is not None
        return self._batch.last_ts(i)

    def _take_one(self, i: int, features: SymbolFeatures, bar: Bar) -> bool:
        """One bar of a symbol on the per-symbol path (checked already, or checked here alone)."""
        row = features.update(bar)
        if row is not None:  # as _store, for one row without the fancy indexing
            slot = int(self._next[i])
            self._rows[i, slot] = row
            self._rows[i, slot + self._window] = row
            self._next[i] = (slot + 1) % self._window
            self._filled[i] = min(int(self._filled[i]) + 1, self._window)
        outlier = features.last_outlier
        if outlier is not None and outlier.ts == bar.ts:
            self._flagged[(i, bar.ts)] = outlier
        return bool(self._filled[i] == self._window)

    def _take(self, idx: Sequence[int], bars: Sequence[Bar]) -> list[bool]:
        """One pass: distinct symbols, one bar each."""
        scalar = self._scalar
        if len(idx) < BATCH_FROM or self._batch is None:  # a few bars: per symbol where they are
            alone = [scalar[i] for i in idx if i in scalar]
            if len(alone) == len(idx):
                return [self._take_one(i, f, bar) for i, f, bar in zip(idx, alone, bars, strict=True)]
        on_scalar = [p for p, i in enumerate(idx) if i in scalar]
        if self._batch is not None and on_scalar and len(idx) >= BATCH_FROM:
            for p in on_scalar:  # enough symbols: hand them to the batch path, for good
                i = idx[p]
                self._batch.load(i, scalar.pop(i))
            on_scalar = []
        if len(on_scalar) < len(idx):
            batch_pos = [p for p, i in enumerate(idx) if i not in scalar] if on_scalar else range(len(idx))
            chunk_idx = np.asarray([idx[p] for p in batch_pos], dtype=np.int64)
            chunk = bars if not on_scalar else [bars[p] for p in batch_pos]
            assert self._batch is not None
            ready, rows = self._batch.update(chunk_idx, chunk)
            if len(ready):
                self._store(chunk_idx[ready], rows)
            for i, flagged in self._batch.flagged.items():
                self._flagged[(i, flagged.ts)] = flagged
        for p in on_scalar:
            self._take_one(idx[p], scalar[idx[p]], bars[p])
        full: list[bool] = (self._filled[np.asarray(idx, dtype=np.int64)] == self._window).tolist()
        return full

    def _store(self, idx: Int64Array, rows: npt.NDArray[np.float64]) -> None:
        slot = self._next[idx]
        values = rows.astype(np.float32)
        self._rows[idx, slot] = values
        self._rows[idx, slot + self._window] = values
        self._next[idx] = (slot + 1) % self._window
        self._filled[idx] = np.minimum(self._filled[idx] + 1, self._window)
