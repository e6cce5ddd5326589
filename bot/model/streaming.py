"""Streaming inference: keep each symbol's LSTM state (h, c) and advance it one step per new feature row,
instead of re-running the whole window for every bar.

Cost per bar is one LSTM step instead of `window` steps. The catch is what the prediction means: a window
model (every bundled model: trained on 32-bar windows from a zero state) answers "given the last 32 rows",
while a stream started at the beginning of history answers "given every row so far". The two are the same
computation up to the first full window and then differ by whatever the state still remembers from rows
older than the window: next to nothing for a model whose forget gates sit near 0.5 (the bundled
lstm-equities/0001: mean |difference| ~1e-6 of the predictions' std on 2016 bars), a lot for one that
remembers. `window_and_stream` and `Agreement` measure it for a given model and data;
`bench/inference.py` reports it for the bundled model. Stream a window model only where that was
measured; models trained statefully stream exactly.

How the step is computed, and why (measured on a 2-core AVX-512 CPU, 2 layers x 64 units, 16 features):

* One GEMM per layer: the gate pre-activations are W @ [x; 1; h] with W = [W_ih | b | W_hh], so the two
  matmuls and the bias add of nn.LSTM become one call (a constant row of ones carries the bias).
* Symbols are columns, not rows: activations are (rows, batch) arrays, so each gate is one contiguous block
  and every element-wise op runs on contiguous memory (about 2x faster than column slices of (batch, 4H)).
* sigmoid(z) = (1 + tanh(z / 2)) / 2, with the halving folded into the weights: one tanh over all four
  gates, then one affine step on the three sigmoid gates (numpy has no sigmoid ufunc; torch's CPU tanh is
  slow, which is one reason the torch backend is only the default off the CPU).
* numpy on CPU: per-call overhead is about 1 us against 3-5 us for a torch op, so one symbol takes about
  25 us instead of ~50 us with torch ops (and ~160 us for an eager nn.LSTM step). From 32 symbols on, the
  GEMM goes through torch.mm on the same memory: as fast as numpy's OpenBLAS per thread, but on as many
  threads as torch is allowed (daemon.torch_threads, or `threads`), where OpenBLAS would take every core
  by itself. The torch backend (any device) is there for CUDA.
* When a batch is the strategy's whole symbol set (bar-aligned symbols: the usual case), the step runs in
  place on the state storage; otherwise the batch's columns are gathered into a per-batch-size workspace
  and scattered back (about 40 us of copies at 100 symbols).

Not thread-safe: one StreamingPredictor belongs to one strategy's decision loop.
"""

from __future__ import annotations

import contextlib
import copy
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from bot.model.predictor import Predictor
from bot.model.registry import LoadedModel

Backend = Literal["auto", "numpy", "torch"]
FloatArray = npt.NDArray[np.float32]
IndexArray = npt.NDArray[np.intp]

A = TypeVar("A", FloatArray, torch.Tensor)  # the backend's float array
X = TypeVar("X", IndexArray, torch.Tensor)  # the backend's index array

_MAX_PLANS = 32  # distinct symbol batches remembered (their index arrays)
_MAX_WORKSPACES = 8  # distinct batch sizes that keep a preallocated workspace
_TORCH_GEMM_FROM = 32  # symbols per batch from which the numpy backend's GEMM goes through torch


class _Ops(Protocol[A, X]):
    """The handful of array operations the step needs; numpy and torch each implement them with out=."""

    def context(self) -> contextlib.AbstractContextManager[object]: ...
    def zeros(self, shape: tuple[int, ...]) -> A: ...
    def from_host(self, host: FloatArray) -> A: ...
    def to_host(self, array: A) -> FloatArray: ...
    def index(self, idx: IndexArray) -> X: ...
    def matmul(self, a: A, b: A, out: A) -> None: ...
    def tanh(self, a: A, out: A) -> None: ...
    def mul(self, a: A, b: A, out: A) -> None: ...
    def gather_columns(self, src: A, idx: X, out: A) -> None: ...
    def scatter_columns(self, dst: A, idx: X, src: A) -> None: ...
    def load_columns(self, dst: A, idx: X | None, host: FloatArray) -> None: ...
    def head(self, weight: A, bias: A, h: A) -> FloatArray: ...


class _NumpyOps:
    """CPU, numpy: lowest per-call overhead, fast SIMD tanh, OpenBLAS GEMM."""

    def context(self) -> contextlib.AbstractContextManager[object]:
        return contextlib.nullcontext()

    def zeros(self, shape: tuple[int, ...]) -> FloatArray:
        return np.zeros(shape, dtype=np.float32)

    def from_host(self, host: FloatArray) -> FloatArray:
        return np.array(host, dtype=np.float32)

    def to_host(self, array: FloatArray) -> FloatArray:
        return np.array(array, dtype=np.float32)

    def index(self, idx: IndexArray) -> IndexArray:
        return idx

    def matmul(self, a: FloatArray, b: FloatArray, out: FloatArray) -> None:
        if out.shape[1] < _TORCH_GEMM_FROM:
            np.matmul(a, b, out=out)  # ~1 us less call overhead; OpenBLAS stays on one thread this small
        else:
            # Same speed as OpenBLAS per thread, but the thread count follows torch.set_num_threads (the
            # daemon's torch_threads), instead of OpenBLAS taking every core on its own.
            torch.mm(torch.from_numpy(a), torch.from_numpy(b), out=torch.from_numpy(out))

    def tanh(self, a: FloatArray, out: FloatArray) -> None:
        np.tanh(a, out=out)

    def mul(self, a: FloatArray, b: FloatArray, out: FloatArray) -> None:
        np.multiply(a, b, out=out)

    def gather_columns(self, src: FloatArray, idx: IndexArray, out: FloatArray) -> None:
        # mode="clip" skips numpy's bounds check and the buffered copy it implies; indices come from
        # our own symbol table, so they are always in range.
        np.take(src, idx, axis=1, out=out, mode="clip")

    def scatter_columns(self, dst: FloatArray, idx: IndexArray, src: FloatArray) -> None:
        dst[:, idx] = src

    def load_columns(self, dst: FloatArray, idx: IndexArray | None, host: FloatArray) -> None:
        if idx is None:
            np.copyto(dst, host.T)
        else:
            dst[:, idx] = host.T

    def head(self, weight: FloatArray, bias: FloatArray, h: FloatArray) -> FloatArray:
        out: FloatArray = np.matmul(weight, h)
        out += bias
        return out


class _TorchOps:
    """Any torch device (CUDA above all); the same algorithm as _NumpyOps, tensor for array."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def context(self) -> contextlib.AbstractContextManager[object]:
        return torch.inference_mode()

    def zeros(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros(shape, dtype=torch.float32, device=self.device)

    def from_host(self, host: FloatArray) -> torch.Tensor:
        return torch.tensor(host, dtype=torch.float32, device=self.device)

    def to_host(self, array: torch.Tensor) -> FloatArray:
        return np.array(array.detach().cpu().numpy(), dtype=np.float32)

    def index(self, idx: IndexArray) -> torch.Tensor:
        return torch.from_numpy(idx.astype(np.int64)).to(self.device)

    def matmul(self, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
        torch.mm(a, b, out=out)

    def tanh(self, a: torch.Tensor, out: torch.Tensor) -> None:
        torch.tanh(a, out=out)

    def mul(self, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
        torch.mul(a, b, out=out)

    def gather_columns(self, src: torch.Tensor, idx: torch.Tensor, out: torch.Tensor) -> None:
        torch.index_select(src, 1, idx, out=out)

    def scatter_columns(self, dst: torch.Tensor, idx: torch.Tensor, src: torch.Tensor) -> None:
        dst.index_copy_(1, idx, src)

    def load_columns(self, dst: torch.Tensor, idx: torch.Tensor | None, host: FloatArray) -> None:
        values = torch.from_numpy(host).to(self.device).T
        if idx is None:
            dst.copy_(values)
        else:
            dst.index_copy_(1, idx, values)

    def head(self, weight: torch.Tensor, bias: torch.Tensor, h: torch.Tensor) -> FloatArray:
        return np.asarray((weight @ h + bias).cpu().numpy(), dtype=np.float32)


@dataclass(frozen=True, slots=True)
class _Layer(Generic[A]):
    """One LSTM layer, rearranged for `gates = weight @ z[first:stop]` (+ bias when the ones row is not
    among those rows). Gate order i, f, o, g with the i, f, o rows halved (see the module docstring)."""

    weight: A
    bias: A | None  # (4H, 1); None when the bias is a column of weight
    first: int  # rows of the activation array this layer reads
    stop: int
    h_first: int  # rows where its hidden state lives (read as input by this layer and the next)


@dataclass(frozen=True, slots=True)
class _Plan(Generic[X]):
    """Where a batch of symbols lives in the state storage."""

    idx: IndexArray  # storage column of each batch position
    backend_idx: X
    whole: bool  # the batch is every symbol (in any order): step the storage in place
    in_order: bool  # ... and in storage order: no permutation either


class _Frame(Generic[A]):
    """Activations for n columns (symbols): z = [x (F rows); 1; h_0; ...; h_{L-1}] and the cell states
    c = [c_0; ...; c_{L-1}], plus scratch for the gates. The storage is one frame with every symbol."""

    __slots__ = ("c", "gates", "scratch", "z")

    def __init__(self, ops: _Ops[A, Any], n_features: int, hidden: int, layers: int, n: int) -> None:
        self.z: A = ops.zeros((n_features + 1 + layers * hidden, n))
        self.z[n_features] = 1.0  # the ones row that carries the biases of layers 0 and 1
        self.c: A = ops.zeros((layers * hidden, n))
        self.gates: A = ops.zeros((4 * hidden, n))
        self.scratch: A = ops.zeros((hidden, n))


def _rearranged_layers(lstm: nn.LSTM, ops: _Ops[A, Any]) -> list[_Layer[A]]:
    """nn.LSTM's own weight_ih_l{k}, weight_hh_l{k}, bias_ih_l{k} + bias_hh_l{k}, in the fused layout."""
    f, hid = lstm.input_size, lstm.hidden_size
    # nn.LSTM stacks gates as i, f, g, o; put the three sigmoid gates first so one slice covers them.
    order = torch.cat(
        (torch.arange(0, 2 * hid), torch.arange(3 * hid, 4 * hid), torch.arange(2 * hid, 3 * hid))
    )
    layers: list[_Layer[A]] = []
    for k in range(lstm.num_layers):
        w_ih = getattr(lstm, f"weight_ih_l{k}").detach().float().cpu()
        w_hh = getattr(lstm, f"weight_hh_l{k}").detach().float().cpu()
        bias = (getattr(lstm, f"bias_ih_l{k}") + getattr(lstm, f"bias_hh_l{k}")).detach().float().cpu()
        h_first = f + 1 + k * hid
        separate_bias: torch.Tensor | None = None
        if k == 0:  # reads [x; 1; h_0]
            weight, first, stop = torch.cat((w_ih, bias[:, None], w_hh), dim=1), 0, h_first + hid
        elif k == 1:  # reads [1; h_0; h_1]: the ones row sits just before h_0
            weight, first, stop = torch.cat((bias[:, None], w_ih, w_hh), dim=1), f, h_first + hid
        else:  # reads [h_{k-1}; h_k]; no ones row next to them, so the bias is added separately
            weight, first, stop = torch.cat((w_ih, w_hh), dim=1), h_first - hid, h_first + hid
            separate_bias = bias[order].clone()[:, None]
            separate_bias[: 3 * hid] *= 0.5
        weight = weight[order].clone()
        weight[: 3 * hid] *= 0.5  # sigmoid(z) = (1 + tanh(z/2)) / 2; halving is exact in floating point
        layers.append(
            _Layer(
                weight=ops.from_host(weight.numpy()),
                bias=None if separate_bias is None else ops.from_host(separate_bias.numpy()),
                first=first,
                stop=stop,
                h_first=h_first,
            )
        )
    return layers


class _Core(Generic[A, X]):
    """State storage plus the step, for one backend."""

    def __init__(self, ops: _Ops[A, X], lstm: nn.LSTM, head: nn.Linear, n_symbols: int) -> None:
        self.ops: _Ops[A, X] = ops
        self.n_features = lstm.input_size
        self.hidden = lstm.hidden_size
        self.n_layers = lstm.num_layers
        self.layers: list[_Layer[A]] = _rearranged_layers(lstm, ops)
        self.head_weight: A = ops.from_host(head.weight.detach().float().cpu().numpy())  # (horizons, H)
        self.head_bias: A = ops.from_host(head.bias.detach().float().cpu().numpy()[:, None])
        self.storage: _Frame[A] = _Frame(ops, self.n_features, self.hidden, self.n_layers, n_symbols)
        self.workspaces: OrderedDict[int, _Frame[A]] = OrderedDict()
        self.last_h = self.n_features + 1 + (self.n_layers - 1) * self.hidden  # first row of h_{L-1}

    def workspace(self, n: int) -> _Frame[A]:
        frame = self.workspaces.get(n)
        if frame is None:
            frame = _Frame(self.ops, self.n_features, self.hidden, self.n_layers, n)
            self.workspaces[n] = frame
            if len(self.workspaces) > _MAX_WORKSPACES:
                self.workspaces.popitem(last=False)
        else:
            self.workspaces.move_to_end(n)
        return frame

    def step(self, plan: _Plan[X], scaled: FloatArray) -> FloatArray:
        """Advance the planned symbols by one row each (scaled inputs); head outputs (horizons, batch)."""
        ops, f = self.ops, self.n_features
        with ops.context():
            if plan.whole:
                frame = self.storage
                ops.load_columns(frame.z[:f], None if plan.in_order else plan.backend_idx, scaled)
            else:
                frame = self.workspace(len(plan.idx))
                ops.load_columns(frame.z[:f], None, scaled)
                ops.gather_columns(self.storage.z[f + 1 :], plan.backend_idx, frame.z[f + 1 :])
                ops.gather_columns(self.storage.c, plan.backend_idx, frame.c)
            self._advance(frame)
            if not plan.whole:
                ops.scatter_columns(self.storage.z[f + 1 :], plan.backend_idx, frame.z[f + 1 :])
                ops.scatter_columns(self.storage.c, plan.backend_idx, frame.c)
            out = ops.head(self.head_weight, self.head_bias, frame.z[self.last_h :])
        if plan.whole and not plan.in_order:
            permuted: FloatArray = out[:, plan.idx]  # storage order -> batch order
            return permuted
        return out

    def _advance(self, frame: _Frame[A]) -> None:
        ops, hid = self.ops, self.hidden
        z, gates, scratch = frame.z, frame.gates, frame.scratch
        for k, layer in enumerate(self.layers):
            ops.matmul(layer.weight, z[layer.first : layer.stop], out=gates)
            if layer.bias is not None:
                gates += layer.bias
            ops.tanh(gates, out=gates)
            sig = gates[: 3 * hid]  # tanh(z/2) -> sigmoid(z) for i, f, o
            sig *= 0.5
            sig += 0.5
            c = frame.c[k * hid : (k + 1) * hid]
            c *= gates[hid : 2 * hid]  # f * c
            ops.mul(gates[:hid], gates[3 * hid :], out=scratch)  # i * g
            c += scratch
            ops.tanh(c, out=scratch)
            # h = o * tanh(c), written where both this layer (next step) and the next layer read it.
            ops.mul(gates[2 * hid : 3 * hid], scratch, out=z[layer.h_first : layer.h_first + hid])


class StreamingPredictor:
    """Carries (h, c) per symbol and LSTM layer; `step` advances a batch of symbols by one feature row.

    Predictions are in the same units as `Predictor.predict`, (batch, horizons) (the card's scaler is
    applied to the raw rows, each horizon is multiplied by its target scale): stepping a symbol from a zero
    state through rows r_1..r_t gives what nn.LSTM gives for the window [r_1..r_t] (tested to 1e-5). A
    multi-asset model's embedding vector is appended to each symbol's scaled row, as in the network.

    `symbols` is fixed at construction, as in FeatureEngine. `device` as in Predictor (default CPU);
    `backend` "auto" uses numpy on CPU and torch elsewhere. `threads`: torch threads for batches of 32
    symbols or more (on the CPU the GEMM is then torch's; smaller batches are single-threaded numpy);
    None keeps torch's process-wide setting (daemon.torch_threads). Two threads make 1000 symbols ~1.5x
    faster on an idle 2-core machine, and many times slower when another process holds a core.
    """

    def __init__(
        self,
        model: LoadedModel,
        symbols: Iterable[str],
        device: torch.device | None = None,
        backend: Backend = "auto",
        threads: int | None = None,
    ) -> None:
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self._threads = threads
        self.card = model.card
        self.device = device or torch.device("cpu")
        lstm, head = model.network.lstm, model.network.head
        if lstm.bidirectional or lstm.proj_size or not lstm.bias:
            raise ValueError(
                "StreamingPredictor supports a unidirectional nn.LSTM with biases, no projection"
            )
        embedding = model.network.embedding
        width = len(self.card.features) + (0 if embedding is None else embedding.embedding_dim)
        if lstm.input_size != width:
            raise ValueError(f"the network takes {lstm.input_size} inputs, the card implies {width}")
        self._symbols: dict[str, int] = {}
        for symbol in symbols:
            if symbol in self._symbols:
                raise ValueError(f"symbol {symbol!r} given twice")
            self._symbols[symbol] = len(self._symbols)
        n = len(self._symbols)
        # Multi-asset: each storage column's embedding vector, appended to its scaled rows.
        self._vectors: FloatArray | None = None
        if embedding is not None:
            assets = {s: i for i, s in enumerate(self.card.symbols)}
            unknown = sorted(set(self._symbols) - set(assets))
            if unknown:
                raise ValueError(f"the asset embedding has no vector for {unknown}")
            table = embedding.weight.detach().float().cpu().numpy()
            self._vectors = np.ascontiguousarray(table[[assets[s] for s in self._symbols]])
        if backend == "auto":
            backend = "numpy" if self.device.type == "cpu" else "torch"
        self.backend: Literal["numpy", "torch"] = backend
        self._core: _Core[FloatArray, IndexArray] | _Core[torch.Tensor, torch.Tensor]
        if backend == "numpy":
            if self.device.type != "cpu":
                raise ValueError(f"the numpy backend runs on the CPU, not {self.device}")
            self._core = _Core(_NumpyOps(), lstm, head, n)
        else:
            self._core = _Core(_TorchOps(self.device), lstm, head, n)
        # warm() runs whole sequences through nn.LSTM itself: a private copy, so that moving or changing the
        # LoadedModel's network (Predictor moves it to its device) cannot touch this one.
        self._lstm = copy.deepcopy(lstm).float().to(self.device).eval()
        self._head = copy.deepcopy(head).float().to(self.device).eval()
        self._mean = np.asarray(self.card.scaler_mean, dtype=np.float32)
        self._std = np.asarray(self.card.scaler_std, dtype=np.float32)
        self._scales = np.asarray(self.card.target_scales, dtype=np.float64)
        self._steps = np.zeros(n, dtype=np.int64)
        self._plans: OrderedDict[tuple[str, ...], _Plan[Any]] = OrderedDict()

    @property
    def symbols(self) -> tuple[str, ...]:
        """The symbols this predictor keeps state for, in storage order."""
        return tuple(self._symbols)

    @property
    def layers(self) -> int:
        """LSTM layers (the first axis of `state`)."""
        return self._core.n_layers

    @property
    def hidden(self) -> int:
        """Units per layer (the last axis of `state`)."""
        return self._core.hidden

    def columns(self, symbols: Sequence[str]) -> IndexArray:
        """The storage column of each symbol (distinct symbols): what `state` and `steps` index. KeyError
        for an unknown symbol, ValueError for a repeated one. Cached per symbol tuple, like `step`'s."""
        return self._plan(symbols).idx

    def steps(self, symbol: str) -> int:
        """Rows fed to `symbol` since construction or its last reset (a burn-in gauge for the caller)."""
        return int(self._steps[self._column(symbol)])

    def step(self, symbols: Sequence[str], rows: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
        """Feed each symbol its next raw feature row; (B, horizons) predicted log returns, in batch order.

        `rows` is (B, n_features), unscaled, one row per symbol in `symbols` (distinct symbols). Raises
        before changing any state: KeyError for an unknown symbol, ValueError for a bad shape, a repeated
        symbol, or a non-finite value (a NaN would otherwise stay in that symbol's state forever).
        """
        rows32 = self._checked_rows(rows, len(symbols))
        if len(symbols) == 0:
            return np.zeros((0, len(self._scales)), dtype=np.float64)
        plan = self._plan(symbols)
        # The same float32 arithmetic as Predictor.predict, so both see bit-identical scaled inputs.
        scaled = (rows32 - self._mean) / self._std
        if self._vectors is not None:
            scaled = np.concatenate((scaled, self._vectors[plan.idx]), axis=1)
        before = torch.get_num_threads()
        threads = self._threads if len(plan.idx) >= _TORCH_GEMM_FROM else None
        if threads is None or threads == before:
            out = self._core.step(plan, scaled)
        else:
            torch.set_num_threads(threads)  # ~0.1 us; the OpenMP pool is kept
            try:
                out = self._core.step(plan, scaled)
            finally:
                torch.set_num_threads(before)
        self._steps[plan.idx] += 1
        return np.asarray(out.T.astype(np.float64) * self._scales, dtype=np.float64)

    def warm(self, symbol: str, rows: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
        """Feed `symbol` a sequence of raw rows (T, n_features) at once; (T, horizons) predictions.

        Same result as T calls of `step` (to float rounding), in one nn.LSTM call from the current state:
        for catching up on history at start-up.
        """
        rows32 = self._checked_rows(rows, None)
        col = self._column(symbol)
        if len(rows32) == 0:
            return np.zeros((0, len(self._scales)), dtype=np.float64)
        scaled = (rows32 - self._mean) / self._std
        if self._vectors is not None:
            scaled = np.concatenate(
                (scaled, np.repeat(self._vectors[col][None], len(scaled), axis=0)), axis=1
            )
        h0, c0 = self.state(symbol)
        with torch.inference_mode():
            x = torch.from_numpy(scaled[None]).to(self.device)
            h = torch.from_numpy(h0[:, None, :]).to(self.device)
            c = torch.from_numpy(c0[:, None, :]).to(self.device)
            out, (h_n, c_n) = self._lstm(x, (h, c))
            predicted = self._head(out[0]).double().cpu().numpy()
            h_last = h_n[:, 0, :].float().cpu().numpy()
            c_last = c_n[:, 0, :].float().cpu().numpy()
        self._set_state(col, h_last, c_last)
        self._steps[col] += len(rows32)
        return np.asarray(predicted * self._scales, dtype=np.float64)

    def reset(self, symbol: str) -> None:
        """Zero `symbol`'s state, as if it had never been fed a row."""
        col = self._column(symbol)
        zeros = np.zeros((self.layers, self.hidden), dtype=np.float32)
        self._set_state(col, zeros, zeros)
        self._steps[col] = 0

    def reset_all(self) -> None:
        """Zero every symbol's state."""
        for symbol in self._symbols:
            self.reset(symbol)

    def state(self, symbol: str) -> tuple[FloatArray, FloatArray]:
        """Copies of `symbol`'s (h, c), each (layers, hidden) float32, like nn.LSTM's h_n[:, i], c_n[:, i]."""
        col = self._column(symbol)
        core = self._core
        f, shape = core.n_features, (core.n_layers, core.hidden)
        with torch.inference_mode():
            z = core.storage.z
            c = core.storage.c
            h_col = z[f + 1 :, col] if isinstance(z, np.ndarray) else z[f + 1 :, col].cpu().numpy()
            c_col = c[:, col] if isinstance(c, np.ndarray) else c[:, col].cpu().numpy()
        return (
            np.array(h_col, dtype=np.float32).reshape(shape),
            np.array(c_col, dtype=np.float32).reshape(shape),
        )

    def _set_state(self, col: int, h: FloatArray, c: FloatArray) -> None:
        core = self._core
        f = core.n_features
        with torch.inference_mode():
            z, cell = core.storage.z, core.storage.c
            if isinstance(z, np.ndarray) and isinstance(cell, np.ndarray):
                z[f + 1 :, col] = h.reshape(-1)
                cell[:, col] = c.reshape(-1)
            elif isinstance(z, torch.Tensor) and isinstance(cell, torch.Tensor):
                z[f + 1 :, col] = torch.from_numpy(h.reshape(-1)).to(z.device)
                cell[:, col] = torch.from_numpy(c.reshape(-1)).to(cell.device)

    def _checked_rows(self, rows: npt.NDArray[np.floating[Any]], batch: int | None) -> FloatArray:
        rows32 = np.asarray(rows, dtype=np.float32)
        width = len(self._mean)
        if rows32.ndim != 2 or rows32.shape[1] != width or (batch is not None and rows32.shape[0] != batch):
            expected = f"({'T' if batch is None else batch}, {width})"
            raise ValueError(f"rows shape {np.shape(rows)} is not {expected}")
        if not np.isfinite(rows32).all():
            raise ValueError("rows contain NaN or infinite values")
        return rows32

    def _column(self, symbol: str) -> int:
        try:
            return self._symbols[symbol]
        except KeyError:
            raise KeyError(
                f"unknown symbol {symbol!r}: this streaming predictor tracks {sorted(self._symbols)}"
            ) from None

    def _plan(self, symbols: Sequence[str]) -> _Plan[Any]:
        # The engine asks for the same batches bar after bar; remember their index arrays so that the
        # per-bar cost does not include a dict lookup per symbol.
        key = tuple(symbols)
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
            return plan
        idx = np.fromiter((self._column(s) for s in key), dtype=np.intp, count=len(key))
        if len(np.unique(idx)) != len(idx):
            raise ValueError("a symbol appears twice in one step")
        whole = len(idx) == len(self._symbols)
        in_order = whole and bool((idx == np.arange(len(idx))).all())
        backend_idx = self._core.ops.index(idx)
        plan = _Plan(idx=idx, backend_idx=backend_idx, whole=whole, in_order=in_order)
        self._plans[key] = plan
        if len(self._plans) > _MAX_PLANS:
            self._plans.popitem(last=False)
        return plan


@dataclass(frozen=True, slots=True)
class Agreement:
    """How closely one series of predictions follows another (the reference)."""

    n: int
    corr: float
    mean_abs_diff_over_std: float  # mean |a - b| over the reference's standard deviation
    sign_agreement: float

    @classmethod
    def of(cls, a: npt.NDArray[np.float64], reference: npt.NDArray[np.float64]) -> Agreement:
        """Compare `a` against `reference` (same length)."""
        std = float(reference.std())
        both_vary = std > 0 and float(a.std()) > 0
        return cls(
            n=len(a),
            corr=float(np.corrcoef(a, reference)[0, 1]) if both_vary else float("nan"),
            mean_abs_diff_over_std=float(np.mean(np.abs(a - reference)) / std) if std > 0 else float("nan"),
            sign_agreement=float(np.mean(np.sign(a) == np.sign(reference))),
        )


def window_and_stream(
    model: LoadedModel, rows: npt.NDArray[np.floating[Any]], symbol: str | None = None
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Both paths over one symbol's consecutive raw rows (T, n_features): (window, stream) next-bar
    predictions for rows[window - 1:], the window path as Predictor sees FeatureEngine's windows, the stream
    fed every row from a zero state at rows[0]. `Agreement.of(stream, window)` then says what streaming
    would change for this model: a window model that forgets fast (forget gates well below 1) streams almost
    exactly. `symbol` matters to a multi-asset model only (default: the card's first symbol).
    """
    rows32 = np.asarray(rows, dtype=np.float32)
    window = model.card.window
    if rows32.ndim != 2 or len(rows32) < window:
        raise ValueError(f"need (T >= {window}, n_features) rows, got shape {rows32.shape}")
    name = symbol or model.card.symbols[0]
    # Private copies: Predictor moves the network it is given, and the caller's may be on another device.
    own = LoadedModel(model.card, copy.deepcopy(model.network).cpu(), model.path)
    windows = np.lib.stride_tricks.sliding_window_view(rows32, window, axis=0).transpose(0, 2, 1)
    by_window = Predictor(own).predict(np.ascontiguousarray(windows), [name] * len(windows))[:, 0]
    stream = StreamingPredictor(own, [name])
    by_stream = np.concatenate([stream.step([name], row[None])[:, 0] for row in rows32])[window - 1 :]
    return by_window, by_stream
