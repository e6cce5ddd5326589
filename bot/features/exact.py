"""Exact rolling sums and correctly rounded statistics for many symbols at once, in numpy.

rolling.py keeps one symbol's window sums as Python integers at scale 2**1100 and rounds each statistic once
when it is read, so every statistic is the correctly rounded value of an exact rational function of the
window. This module gives the same correctly rounded values for a whole batch of symbols, with a handful
of numpy operations per statistic instead of a few hundred Python ones per symbol:

* Sums are exact int64 running sums. A value x enters as an integer at a power-of-two scale per series
  and symbol, chosen from the data: `OneLimb` keeps a = x * 2**k (every value in the window an integer
  below 2**bits: prices, volumes), `TwoLimb` keeps x * 2**k = A + B / 2**g with A and B integers, for
  series whose values span more bits than one int64 holds (log returns, MACD lines). Integer addition is
  exact, so a sum is the same whatever came before: a pure function of the window, as in rolling.py. A
  value that does not fit moves that symbol to a new scale (its sums recomputed from its window); a
  window that spans too many bits for any scale is flagged (`ok` False) and the caller computes its
  statistics from the values (exact_mean and friends, at the end of this module).
* Rounding: each statistic is N / den for exact integers N and den. Their long double approximations
  (64-bit significand: 11 bits beyond float64's) give the double nearest the quotient; `certify` accepts
  it wherever the approximation's error bound cannot straddle a midpoint between two doubles, and
  `resolve` decides the rest exactly (ties included, which sums of prices on a decimal grid hit often)
  from N and den modulo 2**64: wrapping int64 arithmetic is exact modulo 2**64, and a residue plus an
  approximation within 2**61 pin an integer down. `exact_from_residue` does that for integers wider than
  64 bits (sums of squares) before they are divided.

Long double must have a 64-bit significand (x86-64's 80-bit format) or more: `EXTENDED` says whether it
does. Elsewhere the feature engine keeps to the per-symbol path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

LD = np.longdouble
EXTENDED = np.finfo(LD).nmant >= 63
U = math.ldexp(1.0, -64)  # unit roundoff of a 64-bit significand: the error bounds are in these
_SLACK = 1.0 + 2.0**-40  # certify's allowance for its own float64 roundings (each about 2**-53 relative)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
LDArray = npt.NDArray[Any]  # numpy's stubs have no precise long double array type


# --- rounding -----------------------------------------------------------------------------------------


_EXPONENT = np.int64(0x7FF0000000000000)
_SIGNIFICAND = np.int64(0x000FFFFFFFFFFFFF)
_HIDDEN = np.int64(1 << 52)
_LD_2_64 = LD(2.0**64)
_LD_2_63 = LD(2.0**63)
_LD_2_M64 = LD(2.0**-64)


def _x87_layout() -> bool:
    """True when long doubles are x86's 80-bit format in 16 bytes, the 64-bit significand (explicit
    leading bit) in the first 8: then certify reads the 11 bits below a double's 53 straight from it."""
    if np.finfo(LD).nmant != 63 or np.dtype(LD).itemsize != 16 or np.little_endian is False:
        return False
    probe = np.array([1.0, 1.5, 1.0 + 2.0**-60], dtype=LD) if EXTENDED else np.zeros(3, dtype=LD)
    probe[2] = LD(1) + LD(2.0**-60)
    sig = probe.view(np.uint64)[::2]
    return bool(sig[0] == 1 << 63 and sig[1] == 3 << 62 and sig[2] == (1 << 63) + 8)


_X87 = _x87_layout()


def certify(q: LDArray, error: float | FloatArray) -> tuple[FloatArray, BoolArray]:
    """The float64 nearest q, and where that may not be the one nearest the exact value v.

    `error` (one bound, or one per value) bounds |q - v| / |q|. Returned `uncertain` is True where
    [q - error|q|, q + error|q|] may reach a midpoint between two doubles (or r is not a normal double):
    there the caller must decide exactly (`resolve`). q == 0 must mean v == 0 (true of every computation
    here: a correctly rounded sum, product or quotient of nonzero values is nonzero in long double's
    range).
    """
    r = q.astype(np.float64)
    bits = r.view(np.int64)
    if _X87 and q.ndim == 1 and q.flags.c_contiguous:
        # q = (top 53 bits + low / 2**11) ulps of a double, low the significand's last 11 bits: its
        # distance from the midpoint (low 2**10) in units of 2**-64 |q|-ish is |low - 1024|, and the error
        # bound is at most error * 2**64 of those units (|q| < 2 * 2**E, a unit 2**(E - 63)).
        low = (q.view(np.uint64)[::2] & 0x7FF).astype(np.int64)
        reach = np.ceil(np.asarray(error) * 2.0**64 * _SLACK) + 1
        exponent = bits & _EXPONENT
        normal = (exponent != 0) & (exponent != _EXPONENT)  # r finite, not subnormal
        return r, ((np.abs(low - 1024) <= reach) | ~normal) & (r != 0) | ((r == 0) & (q != 0))
    d = (q - r.astype(LD)).astype(np.float64)  # q - r is exact (r is within an ulp of q); its double is
    # within 2**-53 relative of it, far inside the slack below
    # Half the gap to the neighbour: half an ulp, a quarter below a power of two (taken on both sides).
    half_gap = (bits & _EXPONENT).view(np.float64) * np.where(bits & _SIGNIFICAND, 2.0**-53, 2.0**-54)
    # |q| <= |r| (1 + 2**-52); the slack covers that and this test's own roundings, all near 2**-52.
    with np.errstate(invalid="ignore"):
        sure = np.abs(d) * _SLACK + np.abs(r) * (error * _SLACK) < half_gap  # False for 0, inf, subnormal
    return r, ~(sure | ((r == 0) & (d == 0)))


def _mod64(y: LDArray) -> IntArray:
    """Integer-valued long doubles modulo 2**64, as int64 (two's complement). y minus its nearest multiple
    of 2**64 is exact (y's low bits), in [-2**63, 2**63]; rint, not floor: numpy's long double floor is
    some 20 times slower."""
    low = y - np.rint(y * _LD_2_M64) * _LD_2_64
    low = np.where(low >= _LD_2_63, low - _LD_2_64, low)  # 2**63 itself is -2**63 modulo 2**64
    out: IntArray = low.astype(np.int64)
    return out


def resolve(
    r: FloatArray, n_mod: IntArray, n_ld: LDArray, den_mod: IntArray, den_ld: LDArray
) -> tuple[FloatArray, BoolArray]:
    """The double nearest N / den (ties to even), given r, the double nearest an approximation of it.

    N and den are integers known exactly modulo 2**64 (n_mod, den_mod: wrapping int64 arithmetic) and
    approximately (n_ld and den_ld within U relative of N and den, den > 0). The answer
    is r or a neighbour: which one follows from the signs of N - m * den at the midpoints m on either side
    of r. Scaled by 2**j so that the midpoints are integers, each such difference is exact: its long
    double approximation is within 2**61 of it and its residue modulo 2**64 is exact. Returns (result,
    undecided): undecided where r is not a normal double or N * 2**j reaches 2**120 (the bounds no longer
    hold); the caller computes those some other way.
    """
    bits = r.view(np.int64)
    field = (bits >> 52) & 0x7FF
    sig = (bits & _SIGNIFICAND) | _HIDDEN  # |r| = sig * 2**e
    e = field - 1075
    edge = (bits & _SIGNIFICAND) == 0  # |r| a power of two: the neighbour toward zero is half as far
    j = np.maximum(0, 2 - e)  # N * 2**j and the midpoints * 2**j: integers
    n2_ld = np.ldexp(n_ld, j)
    n2_mod = np.left_shift(n_mod, j)  # numpy gives 0 from 64 bits on: still right modulo 2**64
    undecided = (field == 0) | (field == 0x7FF) | ~(np.abs(n2_ld) < 2.0**120)
    # |midpoint| * 2**j = odd * 2**t: away from zero (2 sig + 1) 2**(e-1), toward it (2 sig - 1) 2**(e-1)
    # or, below a power of two, (4 sig - 1) 2**(e-2).
    away_odd, away_t = 2 * sig + 1, e - 1 + j
    toward_odd = np.where(edge, 4 * sig - 1, 2 * sig - 1)
    toward_t = np.where(edge, e - 2, e - 1) + j
    negative = bits < 0
    signs = []
    for odd, t in ((away_odd, away_t), (toward_odd, toward_t)):
        m_mod = np.left_shift(odd, t)
        m_ld = np.ldexp(odd.astype(LD), t)
        m_mod = np.where(negative, -m_mod, m_mod)
        m_ld = np.where(negative, -m_ld, m_ld)
        t_ld = n2_ld - m_ld * den_ld  # within 2**61 of N 2**j - m den
        t_mod = n2_mod - m_mod * den_mod  # exact modulo 2**64
        signs.append(np.where(np.abs(t_ld) >= 2.0**62, np.sign(t_ld), np.sign(t_mod)))
    away, toward = signs  # the sign of the exact value minus each midpoint
    if_neg = negative
    above = np.where(if_neg, toward, away)  # the midpoint toward +inf
    below = np.where(if_neg, away, toward)
    up = np.nextafter(r, np.inf)
    down = np.nextafter(r, -np.inf)
    odd_r = (bits & 1) == 1  # adjacent doubles differ in the last significand bit
    out = np.where((above > 0) | ((above == 0) & odd_r), up, r)
    out = np.where((below < 0) | ((below == 0) & odd_r), down, out)
    return out, undecided


def exact_from_residue(residue: IntArray, approx: LDArray) -> tuple[LDArray, IntArray]:
    """The integer N with N = residue (mod 2**64) and |N - approx| < 2**61, as (Y, delta), N = Y + delta.

    Y is `approx` rounded to an integer, delta an int64: exact whenever the approximation is that good.
    """
    small = np.abs(approx) < 2.0**62
    if small.all():  # then |N| < 2**63: the residue is N itself
        return np.zeros(len(residue), dtype=LD), residue
    y = np.where(small, 0, np.rint(approx))
    return y, residue - _mod64(y)


# --- exact rolling sums -------------------------------------------------------------------------------


class Batch:
    """The symbols of one batch: `idx`, distinct storage indices, and `sel`, the same as a slice when the
    batch is every symbol in storage order, so that state arrays are read as views, not gathered."""

    __slots__ = ("full", "idx", "sel")

    def __init__(self, idx: IntArray, n_symbols: int) -> None:
        self.idx = idx
        self.full = len(idx) == n_symbols and bool((idx[1:] > idx[:-1]).all())  # distinct and sorted: all
        self.sel: IntArray | slice = slice(None) if self.full else idx

    def __len__(self) -> int:
        return len(self.idx)

    def subset(self, positions: IntArray, n_symbols: int) -> Batch:
        """The batch of idx[positions]."""
        return self if len(positions) == len(self.idx) else Batch(self.idx[positions], n_symbols)


class Rings:
    """Several series (closes, log volumes, ...), each the last `length` values per symbol (float64), with
    a count of pushes per series and symbol. values[j, :, s] is series j of symbol s, a ring: push number
    c sits in slot (c + offset[j, s]) % length.

    Lockstep: every symbol of a batch writes series j to the same slot, clock[j] % length, so that reads
    and writes take whole rows values[j, slot] (a view for a batch of every symbol) instead of gathering
    one slot per symbol. A symbol left out of a batch (or whose series j skipped a push: a first bar) falls
    out of step; the next batch it is in rotates its rings back into step first (`align`, automatic).
    """

    __slots__ = ("_aligned_for", "_everyone", "clock", "count", "length", "offset", "values")

    def __init__(self, n_series: int, n_symbols: int, length: int) -> None:
        self.length = length
        self.values: FloatArray = np.zeros((n_series, length, n_symbols))
        self.count: IntArray = np.zeros((n_series, n_symbols), dtype=np.int64)
        self.offset: IntArray = np.zeros((n_series, n_symbols), dtype=np.int64)
        self.clock: IntArray = np.zeros(n_series, dtype=np.int64)
        self._aligned_for: Batch | None = None  # the batch last put in step (reads before its push)
        self._everyone = True  # every symbol in step with every series: nothing to check

    def align(self, batch: Batch) -> None:
        """Rotate the rings of the batch's symbols that are out of step, so that every next slot is
        clock % length (a no-op for a batch already in step: the usual case)."""
        if self._everyone or self._aligned_for is batch:
            return
        self._aligned_for = batch
        self._everyone = batch.full  # once this batch of everyone is put in step
        sel = batch.sel
        shift = (self.clock[:, None] - self.count[:, sel] - self.offset[:, sel]) % self.length
        if not shift.any():
            return
        for j in np.flatnonzero(shift.any(axis=1)).tolist():
            behind = np.flatnonzero(shift[j])
            symbols, sh = batch.idx[behind], shift[j, behind]
            rows = (np.arange(self.length)[:, None] - sh) % self.length  # slot p takes slot p - shift
            self.values[j][:, symbols] = self.values[j][rows, symbols]
            self.offset[j, symbols] += sh

    def ago(self, series: IntArray, back: IntArray, batch: Batch) -> FloatArray:
        """(len(series), len(batch)): series[p] of each symbol, the value pushed back[p] pushes before the
        next one (1: the latest); meaningless where count < back."""
        self.align(batch)
        slots = (self.clock[series] - back) % self.length
        if batch.full:
            rows: FloatArray = self.values[series, slots]
            return rows
        out: FloatArray = self.values[series[:, None], slots[:, None], batch.idx]
        return out

    def back(self, j: int, batch: Batch, back: int) -> FloatArray:
        """Series j of each symbol in the batch: the value pushed `back` pushes ago (1: the latest)."""
        out: FloatArray = self.ago(np.array([j]), np.array([back]), batch)[0]
        return out

    def window(self, j: int, symbol: int, n: int) -> list[float]:
        """Series j's last min(n, count) values of one symbol, oldest first, as Python floats."""
        count = int(self.count[j, symbol])
        n = min(n, count, self.length)
        pos = (count + int(self.offset[j, symbol]) - n + np.arange(n)) % self.length
        out: list[float] = self.values[j, pos, symbol].tolist()
        return out

    def push(self, batch: Batch, x: FloatArray, active: BoolArray | None) -> None:
        """x[j, i] onto series j of the batch's i-th symbol, where active[j, i] (everywhere if None); the
        symbols left out, or inactive for a series, fall out of step with it."""
        self.align(batch)
        slots = self.clock % self.length
        if active is None:
            if batch.full:
                self.values[np.arange(len(x)), slots] = x
            else:
                self.values[np.arange(len(x))[:, None], slots[:, None], batch.idx] = x
            self.count[:, batch.sel] += 1
        else:
            series, col = np.nonzero(active)
            sym = batch.idx[col]
            self.values[series, slots[series], sym] = x[series, col]
            self.count[series, sym] += 1
        self.clock += 1
        # Every symbol of the batch pushed every series: still in step (the rest fell behind).
        self._aligned_for = batch if active is None else None
        self._everyone = self._everyone and active is None and batch.full

    def load(self, j: int, symbol: int, values: Sequence[float]) -> None:
        """Make series j of one symbol these values (oldest first), as if just pushed in order."""
        values = list(values)[-self.length :]
        self.values[j, : len(values), symbol] = values
        self.count[j, symbol] = len(values)
        self.offset[j, symbol] = 0
        self._aligned_for = None
        self._everyone = False

    def scale(self, j: int, symbols: IntArray, factor: FloatArray) -> None:
        """Multiply series j's stored values of each symbol by its factor (float products, as rescale)."""
        self.values[j][:, symbols] *= factor


def _top_and_low(values: Sequence[float]) -> tuple[int, int] | None:
    """(exponent of the highest set bit, of the lowest set bit) over the nonzero values; None if all 0."""
    top = low = None
    for x in values:
        if x == 0.0:
            continue
        num, den = abs(x).as_integer_ratio()
        shift = den.bit_length() - 1  # x = num / 2**shift
        t = num.bit_length() - 1 - shift
        lo = (num & -num).bit_length() - 1 - shift
        top = t if top is None else max(top, t)
        low = lo if low is None else min(low, lo)
    return None if top is None or low is None else (top, low)


def _bits(widest: int) -> int:
    """Magnitude bits per value such that `widest` of them (or one times `widest`) stay below 2**62."""
    return min(56, 62 - (widest + 1).bit_length())


_MAX_SCALE = 500  # |k| at most this: 2**k, 2**-k and 2**-2k are normal doubles


class _Sums:
    """What both kinds of exact sums share: the rings, a power-of-two scale per series and symbol (k, and
    2**k and 2**-k as doubles, so that scaling is one exact multiplication), and which windows (series j,
    w values) are summed."""

    def __init__(self, rings: Rings, windows: Sequence[tuple[int, int]]) -> None:
        self.rings = rings
        self.pairs = tuple(dict.fromkeys(windows))
        self._pair = {pair: i for i, pair in enumerate(self.pairs)}
        self.pair_series: IntArray = np.array([j for j, _ in self.pairs], dtype=np.int64)
        self.pair_window: IntArray = np.array([w for _, w in self.pairs], dtype=np.int64)
        n_series, n_symbols = rings.count.shape
        self.wmax = [max((w for j2, w in self.pairs if j2 == j), default=1) for j in range(n_series)]
        if max(self.wmax) > rings.length:
            raise ValueError("the rings are shorter than the widest window")
        self.bits = np.array([_bits(w) for w in self.wmax], dtype=np.int64)
        self.k: IntArray = np.zeros((n_series, n_symbols), dtype=np.int64)
        self.scale: FloatArray = np.ones((n_series, n_symbols))  # 2**k
        self.unit: FloatArray = np.ones((n_series, n_symbols))  # 2**-k
        self.ok: BoolArray = np.ones((n_series, n_symbols), dtype=np.bool_)

    def pair(self, j: int, window: int) -> int:
        """Index of the sum of series j over `window` values."""
        return self._pair[(j, window)]

    def _set_scale(self, j: int, s: int, k: int) -> bool:
        """Series j of symbol s at scale 2**k; False (and not ok) if k is out of range."""
        if abs(k) > _MAX_SCALE:
            self.ok[j, s] = False
            return False
        self.ok[j, s] = True
        self.k[j, s] = k
        self.scale[j, s] = math.ldexp(1.0, k)
        self.unit[j, s] = math.ldexp(1.0, -k)
        return True

    def _outgoing(self, batch: Batch, count: IntArray, fine: BoolArray) -> FloatArray:
        """(pairs, batch): the value each window drops with this push (0 where none, or not fine)."""
        leaving = (count[self.pair_series] >= self.pair_window[:, None]) & fine[self.pair_series]
        return np.where(leaving, self.rings.ago(self.pair_series, self.pair_window, batch), 0.0)

    def _push_rings(self, batch: Batch, x: FloatArray, active: BoolArray | None, fine: BoolArray) -> None:
        self.rings.push(batch, x, active)
        redo = ~fine if active is None else active & ~fine
        if redo.any():
            for j, i in zip(*np.nonzero(redo), strict=True):
                self.rescope(int(j), int(batch.idx[i]))

    def rebuild(self, j: int, symbols: Sequence[int]) -> None:
        """Recompute series j's scale and sums of these symbols from the rings (after Rings.scale/load)."""
        for s in symbols:
            self.rescope(j, s)

    def rescope(self, j: int, s: int) -> None:
        """Choose series j's scale for symbol s from its window and recompute its sums (or flag it)."""
        raise NotImplementedError


class OneLimb(_Sums):
    """Exact running sums over windows of ring series, int64: per series j and symbol s every value x in
    the widest window is an integer a = x * 2**k[j, s] with |a| < 2**bits[j]; sums are in units 2**-k. For
    the (series, window) pairs in `squares`, also the exact sum of squares, as three int64 limbs.

    ok[j, s] is False while the window spans too many bits for one int64: the sums are then meaningless
    and statistics must come from the values (fallback). Push with `push`, not Rings.push.
    """

    def __init__(
        self, rings: Rings, windows: Sequence[tuple[int, int]], squares: Sequence[tuple[int, int]] = ()
    ) -> None:
        super().__init__(rings, windows)
        self.square_pairs: IntArray = np.array([self.pair(j, w) for j, w in squares], dtype=np.int64)
        self._square = {pair: i for i, pair in enumerate(squares)}
        self.sums: IntArray = np.zeros((len(self.pairs), rings.count.shape[1]), dtype=np.int64)
        self.sq: IntArray = np.zeros((3, len(self.square_pairs), rings.count.shape[1]), dtype=np.int64)
        self._limit = np.ldexp(1.0, self.bits)[:, None]

    def sum(self, j: int, window: int, batch: Batch) -> IntArray:
        """Exact sums of series j over the last `window` values, in units 2**-k[j]."""
        out: IntArray = self.sums[self.pair(j, window), batch.sel]
        return out

    def push(self, batch: Batch, x: FloatArray, active: BoolArray | None = None) -> None:
        """Append x[j, i] to series j of the batch's i-th symbol where active[j, i] (everywhere if None)."""
        sel = batch.sel
        count = self.rings.count[:, sel]
        scale = self.scale[:, sel]
        a = x * scale  # exact: a power of two, and the results are integers below 2**bits or flagged
        fine = self.ok[:, sel] & (np.abs(a) < self._limit) & (np.trunc(a) == a) & ((a != 0) | (x == 0))
        if active is not None:
            fine &= active
        a_new = np.where(fine, a, 0.0).astype(np.int64)
        x_out = self._outgoing(batch, count, fine)
        # exact: every value in a window fits its scale; 0 where nothing leaves or the push is not fine
        a_out = (x_out * scale[self.pair_series]).astype(np.int64)
        self.sums[:, sel] += a_new[self.pair_series] - a_out
        if len(self.square_pairs):
            sp = self.square_pairs
            self.sq[:, :, sel] += _limbs(a_new[self.pair_series[sp]]) - _limbs(a_out[sp])
        self._push_rings(batch, x, active, fine)

    def rescope(self, j: int, s: int) -> None:
        """Choose series j's scale for symbol s from its window and recompute its sums (or flag it)."""
        values = self.rings.window(j, s, self.wmax[j])
        span = _top_and_low(values)
        k = 0
        if span is not None:  # integers with room for finer values below and larger ones above
            top, low = span
            k = -low + max(0, int(self.bits[j]) - 1 - (top - low)) // 2
        if (span is not None and span[0] + k >= self.bits[j]) or not self._set_scale(j, s, k):
            self.ok[j, s] = False
            return
        ints = [int(math.ldexp(x, k)) for x in values]
        n = len(ints)
        for i, (j2, w) in enumerate(self.pairs):
            if j2 == j:
                self.sums[i, s] = sum(ints[max(0, n - w) :])
        for q, p in enumerate(self.square_pairs.tolist()):
            if self.pairs[p][0] == j:
                tail = np.asarray(ints[max(0, n - self.pairs[p][1]) :], dtype=np.int64)
                self.sq[:, q, s] = _limbs(tail).sum(axis=-1)

    def sum_of_squares(self, j: int, window: int, batch: Batch) -> tuple[IntArray, LDArray]:
        """The exact sum of squares of series j over `window` values: (its value modulo 2**64, a long
        double approximation within 3 U of it), in units 2**-2k."""
        q = self._square[(j, window)]
        p, m, r = self.sq[0, q, batch.sel], self.sq[1, q, batch.sel], self.sq[2, q, batch.sel]
        residue: IntArray = (p << 56) + (m << 29) + r  # wraps: exact modulo 2**64
        approx = p.astype(LD) * _LD_2_56 + m.astype(LD) * _LD_2_29 + r.astype(LD)
        return residue, approx


_LD_2_56 = LD(2.0**56)
_LD_2_29 = LD(2.0**29)


def _limbs(a: IntArray) -> IntArray:
    """a**2 as three nonnegative limbs (h**2, h*l, l**2) with |a| = h * 2**28 + l: a**2 = h**2 * 2**56 +
    h*l * 2**29 + l**2. Each limb is below 2**(2*bits - 56) for |a| < 2**bits."""
    m = np.abs(a)
    h = m >> 28
    lo = m & ((1 << 28) - 1)
    out = np.empty((3, *m.shape), dtype=np.int64)
    np.multiply(h, h, out=out[0])
    np.multiply(h, lo, out=out[1])
    np.multiply(lo, lo, out=out[2])
    return out


class TwoLimb(_Sums):
    """Exact running sums over windows of ring series with x * 2**k = A + B / 2**g, A and B int64
    (|A| < 2**bits, B the fraction times 2**g, |B| < 2**g, g = bits), so that a window may span about
    2 * bits bits. The sum over a window is (SA * 2**g + SB) * 2**-(k + g). For the (series, window)
    pairs in `absolute`, also the sums of |x| (S|A|, S|B|: A and B have x's sign). Push with `push`, not
    Rings.push.
    """

    def __init__(
        self, rings: Rings, windows: Sequence[tuple[int, int]], absolute: Sequence[tuple[int, int]] = ()
    ) -> None:
        super().__init__(rings, windows)
        self.g = self.bits  # per series
        n = rings.count.shape[1]
        self.sums: IntArray = np.zeros((len(self.pairs), 2, n), dtype=np.int64)
        self.abs_pairs: IntArray = np.array([self.pair(j, w) for j, w in absolute], dtype=np.int64)
        self._absolute = {pair: i for i, pair in enumerate(absolute)}
        self.abs_sums: IntArray = np.zeros((len(self.abs_pairs), 2, n), dtype=np.int64)
        self._limit = np.ldexp(1.0, self.bits)
        self._frac = np.ldexp(1.0, self.g)  # 2**g

    def split(
        self, x: FloatArray, scale: FloatArray, series: IntArray
    ) -> tuple[IntArray, IntArray, BoolArray]:
        """(A, B, fits): x * scale = A + B / 2**g[series], fits where both are exact and in range (the
        arrays broadcast together; scale a power of two)."""
        a = x * scale
        whole = np.trunc(a)
        b = (a - whole) * self._frac[series]  # a - whole is exact: the fraction of a float
        fits = (np.abs(a) < self._limit[series]) & (np.trunc(b) == b) & ((a != 0) | (x == 0))
        return np.where(fits, whole, 0.0).astype(np.int64), np.where(fits, b, 0.0).astype(np.int64), fits

    def parts(self, j: int, window: int, batch: Batch, absolute: bool = False) -> IntArray:
        """(2, len(batch)): exact SA, SB (S|A|, S|B| with `absolute`) of series j over `window` values."""
        if absolute:
            out: IntArray = self.abs_sums[self._absolute[(j, window)]][:, batch.sel]
        else:
            out = self.sums[self.pair(j, window)][:, batch.sel]
        return out

    def exact(self, j: int, window: int, batch: Batch, absolute: bool = False) -> tuple[IntArray, LDArray]:
        """The exact sum (of |x| with `absolute`) over `window` values in units 2**-(k+g), SA * 2**g + SB:
        (its value modulo 2**64, its long double value correctly rounded: one rounding of exact terms)."""
        a, b = self.parts(j, window, batch, absolute)
        g = int(self.g[j])
        return (a << g) + b, a.astype(LD) * LD(self._frac[j]) + b.astype(LD)

    def push(self, batch: Batch, x: FloatArray, active: BoolArray | None = None) -> None:
        """Append x[j, i] to series j of the batch's i-th symbol where active[j, i] (everywhere if None)."""
        sel = batch.sel
        count = self.rings.count[:, sel]
        scale = self.scale[:, sel]
        series = np.arange(len(x))[:, None]
        a_new, b_new, fits = self.split(x, scale, series)
        fine = self.ok[:, sel] & fits
        if active is not None:
            fine &= active
        ps = self.pair_series
        x_out = self._outgoing(batch, count, fine)
        # The window's values fit their scale: split without the checks.
        a = x_out * scale[ps]
        whole = np.trunc(a)
        a_out = whole.astype(np.int64)
        b_out = ((a - whole) * self._frac[ps][:, None]).astype(np.int64)
        new = np.stack((np.where(fine, a_new, 0), np.where(fine, b_new, 0)), axis=1)[ps]  # (pairs, 2, batch)
        out = np.stack((a_out, b_out), axis=1)
        self.sums[:, :, sel] += new - out
        if len(self.abs_pairs):
            ap = self.abs_pairs
            self.abs_sums[:, :, sel] += np.abs(new[ap]) - np.abs(out[ap])
        self._push_rings(batch, x, active, fine)

    def rescope(self, j: int, s: int) -> None:
        """Choose series j's scale for symbol s from its window and recompute its sums (or flag it)."""
        values = self.rings.window(j, s, self.wmax[j])
        span = _top_and_low(values)
        k = 0
        if span is not None:  # the spare bits shared between room above the largest and below the finest
            top, low = span
            spare = int(self.bits[j]) - 1 + int(self.g[j]) - (top - low)
            k = int(self.bits[j]) - 1 - top - max(0, spare) // 2
        if (span is not None and span[1] + k + int(self.g[j]) < 0) or not self._set_scale(j, s, k):
            self.ok[j, s] = False
            return
        x = np.asarray(values)
        n = len(x)
        a, b, fits = self.split(x, np.full(n, self.scale[j, s]), np.full(n, j))
        if not fits.all():
            raise AssertionError("a value outside the scale chosen for its window")
        for i, (j2, w) in enumerate(self.pairs):
            if j2 == j:
                sl = slice(max(0, n - w), n)
                self.sums[i, :, s] = (a[sl].sum(), b[sl].sum())
                if (j2, w) in self._absolute:
                    self.abs_sums[self._absolute[(j2, w)], :, s] = (np.abs(a[sl]).sum(), np.abs(b[sl]).sum())


# --- exact statistics from the values, in Python: the rare cases the above leaves open ------------------


def _ints(values: Sequence[float]) -> tuple[list[int], int]:
    """The values as integers at one scale 2**-k, exactly."""
    pairs = [x.as_integer_ratio() for x in values]
    k = max((den.bit_length() - 1 for _, den in pairs), default=0)
    return [num << (k - den.bit_length() + 1) for num, den in pairs], k


def exact_sum(values: Sequence[float]) -> float:
    """The correctly rounded sum (ExactRollingSum.sum)."""
    ints, k = _ints(values)
    return sum(ints) / (1 << k)


def exact_mean(values: Sequence[float]) -> float:
    """The correctly rounded mean (ExactRollingSum.mean)."""
    ints, k = _ints(values)
    return sum(ints) / (len(ints) << k)


def exact_mean_square(values: Sequence[float]) -> float:
    """The correctly rounded mean of squares (ExactRollingMoments.mean_square)."""
    ints, k = _ints(values)
    return sum(a * a for a in ints) / (len(ints) << (2 * k))


def exact_variance(values: Sequence[float], ddof: int) -> float:
    """The correctly rounded variance (ExactRollingMoments.variance)."""
    ints, k = _ints(values)
    n = len(ints)
    s1 = sum(ints)
    return (n * sum(a * a for a in ints) - s1 * s1) / ((n * (n - ddof)) << (2 * k))


def exact_deviation(x: float, values: Sequence[float]) -> float:
    """x minus the mean of values, correctly rounded (ExactRollingSum.deviation)."""
    ints, k = _ints([*values, x])
    n = len(values)
    return (n * ints[-1] - sum(ints[:-1])) / (n << k)


def exact_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """sum(numerator) / sum(denominator), correctly rounded; the denominator's sum must not be 0."""
    ints, _ = _ints([*numerator, *denominator])
    n = len(numerator)
    return sum(ints[:n]) / sum(ints[n:])


def exact_ppo(fast: Sequence[float], slow: Sequence[float]) -> float:
    """(mean(fast) / mean(slow) - 1) correctly rounded, as FiniteMACD's line."""
    ints, _ = _ints([*fast, *slow])
    nf = len(fast)
    ns = len(slow)
    sf, ss = sum(ints[:nf]), sum(ints[nf:])
    return (ns * sf - nf * ss) / (nf * ss)
