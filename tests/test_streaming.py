"""StreamingPredictor: one LSTM step per bar from carried (h, c), checked against nn.LSTM over the same rows,
against Predictor (scaler and target scale), and the benchmark script's smoke run. CPU only."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

from bot.bars import Bar
from bot.model.card import ModelCard
from bot.model.forecaster import StreamingForecaster
from bot.model.network import LSTMForecaster
from bot.model.predictor import Predictor
from bot.model.registry import LoadedModel, latest_version, load_model
from bot.model.streaming import Agreement, StreamingPredictor, window_and_stream

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parent.parent
BUNDLED = latest_version(REPO / "models" / "lstm-equities")
N_FEATURES, HIDDEN = 5, 12
SYMBOLS = ("A", "B", "C", "D", "E")
BACKENDS = ["numpy", "torch"]  # both on the CPU: the torch backend is the one CUDA would use

Rows = npt.NDArray[np.float32]


def bits(a: npt.NDArray[Any]) -> bytes:
    """Raw bytes: equality means bit-identical."""
    return np.ascontiguousarray(a).tobytes()


def make_model(
    layers: int,
    seed: int = 0,
    window: int = 8,
    n_features: int = N_FEATURES,
    *,
    horizons: tuple[int, ...] = (1,),
    embedding: int = 0,
) -> LoadedModel:
    """Random weights, a non-trivial scaler and target scales (so that both are exercised); with
    `embedding`, a multi-asset model over SYMBOLS."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    network = LSTMForecaster(
        n_features, HIDDEN, layers, 0.0, len(horizons), n_assets=len(SYMBOLS), asset_embedding=embedding
    ).eval()
    card = ModelCard(
        name="stream-test",
        version="0001",
        created_at="",
        features=[f"f{i}" for i in range(n_features)],
        feature_settings={},
        window=window,
        horizons=list(horizons),
        target="test",
        architecture={
            "kind": "lstm",
            "n_features": n_features,
            "hidden": HIDDEN,
            "layers": layers,
            "asset_embedding": embedding,
        },
        scaler_mean=rng.normal(0.0, 0.5, n_features).tolist(),
        scaler_std=rng.uniform(0.5, 2.0, n_features).tolist(),
        target_scales=[0.37 * h**0.5 for h in horizons],
        symbols=list(SYMBOLS),
        timeframe="1h",
        training_span={},
        validation_span={},
        data_sha256="",
        training={},
    )
    return LoadedModel(card, network, Path())


def reference(model: LoadedModel, history: Rows, symbol: str = "A") -> tuple[Rows, Rows, Rows]:
    """nn.LSTM over the whole history from a zero state: (predictions per horizon, h_n, c_n)."""
    card = model.card
    scaled = (history - np.asarray(card.scaler_mean, np.float32)) / np.asarray(card.scaler_std, np.float32)
    x = torch.from_numpy(scaled[None])
    assets = torch.tensor([SYMBOLS.index(symbol)])
    with torch.inference_mode():
        predicted = model.network(x, assets)[0].numpy() * np.asarray(card.target_scales)
        if model.network.embedding is not None:
            x = torch.cat((x, model.network.embedding(assets)[:, None].expand(-1, len(history), -1)), dim=2)
        _, (h_n, c_n) = model.network.lstm(x)
    return predicted, h_n[:, 0].numpy(), c_n[:, 0].numpy()


def random_rows(model: LoadedModel, rng: np.random.Generator, n: int) -> Rows:
    """Rows around the card's scaler, so the scaled inputs are O(1)."""
    mean, std = np.asarray(model.card.scaler_mean), np.asarray(model.card.scaler_std)
    return (mean + std * rng.standard_normal((n, len(mean)))).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("layers", "horizons", "embedding"),
    [(1, (1,), 0), (2, (1,), 0), (3, (1,), 0), (2, (1, 5, 20), 0), (2, (1, 5), 3)],
)
def test_stepping_equals_nn_lstm_over_each_symbols_history(
    layers: int, horizons: tuple[int, ...], embedding: int, backend: Any
) -> None:
    model = make_model(layers, horizons=horizons, embedding=embedding)
    symbols = list(SYMBOLS)
    stream = StreamingPredictor(model, symbols, backend=backend)
    rng = np.random.default_rng(layers)
    history: dict[str, list[Rows]] = {s: [] for s in symbols}
    # Every kind of batch: the whole set in order (in place), shuffled (in place, permuted), and subsets
    # (gathered); a reset in the middle; symbols that skip bars so their histories differ in length.
    batches = [
        symbols,
        ["C", "A"],
        symbols[::-1],
        ["B", "D", "E"],
        ["reset B"],
        symbols,
        ["E"],
        ["D", "B", "A", "E", "C"],
        ["B", "C"],
        symbols,
    ]
    for batch in batches:
        if batch[0].startswith("reset"):
            name = batch[0].split()[1]
            stream.reset(name)
            history[name] = []
            continue
        rows = random_rows(model, rng, len(batch))
        predicted = stream.step(batch, rows)
        assert predicted.shape == (len(batch), len(horizons)) and predicted.dtype == np.float64
        for symbol, row, value in zip(batch, rows, predicted, strict=True):
            history[symbol].append(row)
            expected, h_n, c_n = reference(model, np.stack(history[symbol]), symbol)
            np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)
            h, c = stream.state(symbol)
            np.testing.assert_allclose(h, h_n, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(c, c_n, rtol=1e-5, atol=1e-6)
    for symbol in symbols:
        assert stream.steps(symbol) == len(history[symbol])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_step_leaves_the_other_symbols_untouched(backend: Any) -> None:
    model = make_model(2)
    symbols = [f"S{i}" for i in range(6)]
    stream = StreamingPredictor(model, symbols, backend=backend)
    rng = np.random.default_rng(7)
    stream.step(symbols, random_rows(model, rng, len(symbols)))  # every state non-zero
    before = {s: stream.state(s) for s in symbols}
    stream.step(["S4", "S1"], random_rows(model, rng, 2))
    for symbol in symbols:
        h, c = stream.state(symbol)
        changed = not (np.array_equal(h, before[symbol][0]) and np.array_equal(c, before[symbol][1]))
        assert changed == (symbol in {"S1", "S4"}), symbol
    assert [stream.steps(s) for s in symbols] == [1, 2, 1, 1, 2, 1]
    stream.reset("S1")
    h, c = stream.state("S1")
    assert not h.any() and not c.any() and stream.steps("S1") == 0
    assert np.array_equal(stream.state("S4")[0], stream.state("S4")[0])  # reading state changes nothing


@pytest.mark.parametrize("backend", BACKENDS)
def test_warm_equals_stepping_row_by_row(backend: Any) -> None:
    model = make_model(2)
    rng = np.random.default_rng(3)
    start, rows = random_rows(model, rng, 3), random_rows(model, rng, 20)
    warmed = StreamingPredictor(model, ["X", "Y"], backend=backend)
    stepped = StreamingPredictor(model, ["X", "Y"], backend=backend)
    for row in start:  # from a non-zero state: warm must continue it, not start over
        warmed.step(["X"], row[None])
        stepped.step(["X"], row[None])
    from_warm = warmed.warm("X", rows)
    from_steps = np.concatenate([stepped.step(["X"], row[None]) for row in rows])
    np.testing.assert_allclose(from_warm, from_steps, rtol=1e-5, atol=1e-7)
    for a, b in zip(warmed.state("X"), stepped.state("X"), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert warmed.steps("X") == stepped.steps("X") == 23
    assert not warmed.state("Y")[0].any()
    assert warmed.warm("Y", np.zeros((0, N_FEATURES))).shape == (0, 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_stream_predicts_like_predictor_on_the_bundled_model(backend: Any) -> None:
    """Same scaler, same head, same target scale: a one-row window through Predictor is the first step from
    zero, and a full window is `window` steps from zero (stream and window part only after that)."""
    bundled = load_model(BUNDLED)
    card = bundled.card
    rng = np.random.default_rng(11)
    mean, std = np.asarray(card.scaler_mean), np.asarray(card.scaler_std)
    symbols = ["SPY", "AAPL", "IBM", "QQQ"]
    windows = (mean + std * rng.standard_normal((len(symbols), card.window, len(mean)))).astype(np.float32)

    one_row = Predictor(replace(bundled, card=replace(card, window=1))).predict(windows[:, :1])
    stream = StreamingPredictor(bundled, symbols, backend=backend)
    np.testing.assert_allclose(stream.step(symbols, windows[:, 0]), one_row, rtol=1e-5, atol=1e-9)

    full = Predictor(load_model(BUNDLED)).predict(windows)
    for t in range(1, card.window):
        last = stream.step(symbols, windows[:, t])
    np.testing.assert_allclose(last, full, rtol=1e-5, atol=1e-9)
    assert np.abs(full).max() > 1e-5  # not trivially equal


def test_bad_input_is_refused_without_touching_state() -> None:
    model = make_model(1)
    stream = StreamingPredictor(model, ["A", "B"])
    rng = np.random.default_rng(5)
    stream.step(["A", "B"], random_rows(model, rng, 2))
    before = [stream.state(s) for s in ("A", "B")]
    good = random_rows(model, rng, 2)
    nan = good.copy()
    nan[1, 2] = np.nan
    with pytest.raises(KeyError, match="unknown symbol 'Z'"):
        stream.step(["A", "Z"], good)
    with pytest.raises(ValueError, match="twice"):
        stream.step(["A", "A"], good)
    with pytest.raises(ValueError, match="NaN"):
        stream.step(["A", "B"], nan)
    with pytest.raises(ValueError, match="shape"):
        stream.step(["A"], good)
    with pytest.raises(ValueError, match="NaN"):
        stream.warm("A", nan)
    after = [stream.state(s) for s in ("A", "B")]
    for (h0, c0), (h1, c1) in zip(before, after, strict=True):
        assert np.array_equal(h0, h1) and np.array_equal(c0, c1)
    assert stream.step([], np.zeros((0, N_FEATURES))).shape == (0, 1)
    with pytest.raises(ValueError, match="twice"):
        StreamingPredictor(model, ["A", "A"])
    with pytest.raises(ValueError, match="numpy backend"):
        StreamingPredictor(model, ["A"], device=torch.device("meta"), backend="numpy")
    assert stream.symbols == ("A", "B") and (stream.layers, stream.hidden) == (1, HIDDEN)


@pytest.mark.parametrize("threads", [None, 2])
def test_a_wide_batch_takes_the_torch_gemm_and_stays_exact(threads: int | None) -> None:
    """From 32 symbols on, the numpy backend's GEMM runs through torch, on `threads` threads if given."""
    model = make_model(2)
    symbols = [f"S{i}" for i in range(40)]
    stream = StreamingPredictor(model, symbols, threads=threads)
    rng = np.random.default_rng(9)
    rows = random_rows(model, rng, 3 * len(symbols)).reshape(3, len(symbols), N_FEATURES)
    for t in range(3):
        predicted = stream.step(symbols, rows[t])
    expected = Predictor(replace(model, card=replace(model.card, window=3))).predict(rows.transpose(1, 0, 2))
    np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-6)
    assert torch.get_num_threads() == 1  # the fixture's setting, restored after every step


def test_window_and_stream_agree_only_as_far_as_the_model_forgets() -> None:
    """The first full window is the same computation on both paths; later ones differ by what the stream
    remembers from before the window: little for a model whose forget gates are ~0.5, a lot at ~0.95."""
    model = make_model(2, window=6)
    rows = random_rows(model, np.random.default_rng(2), 60)
    by_window, by_stream = window_and_stream(model, rows)
    assert by_window.shape == by_stream.shape == (55,)
    np.testing.assert_allclose(by_stream[0], by_window[0], rtol=1e-5, atol=1e-7)
    forgetful = Agreement.of(by_stream, by_window)
    with torch.no_grad():
        for k in range(2):
            bias: torch.Tensor = getattr(model.network.lstm, f"bias_ih_l{k}")
            bias[HIDDEN : 2 * HIDDEN] += 4.0
    remembering = Agreement.of(*reversed(window_and_stream(model, rows)))
    assert forgetful.n == remembering.n == 55
    assert forgetful.mean_abs_diff_over_std < 0.5 * remembering.mean_abs_diff_over_std
    assert forgetful.corr > remembering.corr
    exact = Agreement.of(by_window, by_window)
    assert (exact.corr, exact.mean_abs_diff_over_std, exact.sign_agreement) == (1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="rows"):
        window_and_stream(model, rows[:5])


def test_the_benchmark_script_runs() -> None:
    done = subprocess.run(
        [sys.executable, "bench/inference.py", "--repeat", "3", "--sizes", "small", "--budget", "0.01"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for text in ("window (64 bars)", "stream", "stagger", "random weights", "corr_window_stream"):
        assert text in done.stdout, text


# --- StreamingForecaster: the continuity check ----------------------------------------------------------


class _PerSymbolForecaster:
    """StreamingForecaster's predict as it was: the continuity check one symbol at a time (the reference)."""

    def __init__(self, stream: StreamingPredictor) -> None:
        self.stream = stream
        self.restarts = 0
        self._last: dict[str, npt.NDArray[np.float64]] = {}

    def predict(self, bars: Sequence[Bar], windows: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
        rows = np.asarray(windows, dtype=np.float64)
        out = np.empty((len(bars), len(self.stream.card.horizons)))
        going_on = []
        for i, bar in enumerate(bars):
            last = self._last.get(bar.symbol)
            if last is not None and np.array_equal(last[1:], rows[i, :-1]):
                going_on.append(i)
            else:
                self.stream.reset(bar.symbol)
                out[i] = self.stream.warm(bar.symbol, rows[i])[-1]
                self.restarts += 1
            self._last[bar.symbol] = rows[i]
        if going_on:
            out[going_on] = self.stream.step([bars[i].symbol for i in going_on], rows[going_on, -1, :])
        return out


def test_the_forecasters_continuity_check_is_the_per_symbol_one() -> None:
    """Windows that move on by one row, and every way not to: a skipped row, the same window again, an
    edited row, a batch of some symbols only, float64 windows, a new window size. Predictions and
    restarts as the per-symbol check gives them, bit for bit."""
    model = make_model(2, horizons=(1, 5))
    window = model.card.window
    rng = np.random.default_rng(4)
    history = {s: random_rows(model, rng, 400) for s in SYMBOLS}
    new = StreamingForecaster(StreamingPredictor(model, SYMBOLS))
    old = _PerSymbolForecaster(StreamingPredictor(model, SYMBOLS))
    at = dict.fromkeys(SYMBOLS, window)
    ts = datetime(2024, 1, 2, tzinfo=UTC)
    for step in range(150):
        symbols = list(SYMBOLS) if step % 4 else [s for s in SYMBOLS if rng.random() < 0.6]
        windows = []
        for s in symbols:
            kind = rng.random()
            if kind < 0.05:
                at[s] += 1  # a row skipped
            elif kind > 0.07:
                at[s] += 1  # else: the same window as last time
            w = history[s][at[s] - window : at[s]].copy()
            if 0.05 <= kind < 0.06:
                w[window // 2, 1] += 1.0  # an edited row
            windows.append(w)
        if not symbols:
            continue
        stacked = np.stack(windows)
        if step in (60, 61):
            stacked = stacked.astype(np.float64)  # another dtype: the check is on values
        if step == 100:
            stacked = stacked[:, 1:]  # another window size: everything restarts
        bars = [Bar(s, ts + timedelta(hours=step), 1.0, 1.0, 1.0, 1.0, 1.0) for s in symbols]
        assert bits(new.predict(bars, stacked)) == bits(old.predict(bars, stacked)), step
        assert new.restarts == old.restarts, step
    assert 10 < new.restarts < 100
