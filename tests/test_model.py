"""The model stage on small real models and real bars: honest samples and split, no leakage into the scaler,
reproducible training, the on-disk registry, the compatibility check, the predictor, the bundled model."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

from bot.bars import Bar
from bot.config import AppConfig, FeatureSettings, StrategyConfig, load_config
from bot.errors import ModelError
from bot.features import FeatureEngine, feature_matrix, feature_names
from bot.feeds.replay import load_csv
from bot.model import LoadedModel, ModelCard, Predictor, resolve_device
from bot.model.card import CARD_FILE, WEIGHTS_FILE
from bot.model.network import LSTMForecaster
from bot.model.registry import (
    check_compatible,
    latest_version,
    list_versions,
    load_model,
    next_version,
    save_model,
)
from bot.model.train_command import training_bars
from bot.model.training import TrainResult, build_samples, data_hash, train_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data" / "equities-1h"
HOUR = timedelta(hours=1)
SPAN_START = datetime(2014, 1, 1, tzinfo=UTC)
SPAN_END = datetime(2015, 7, 1, tzinfo=UTC)
SYMBOLS = ("SPY", "IBM")

BarsBySymbol = dict[str, list[Bar]]
Windows = npt.NDArray[np.float32]


def load_span(symbol: str, start: datetime = SPAN_START, end: datetime = SPAN_END) -> list[Bar]:
    """One symbol's real hourly bars with start <= ts < end."""
    bars, problems = load_csv(DATA / f"{symbol}.csv", symbol, HOUR)
    assert problems == []
    return [b for b in bars if start <= b.ts < end]


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) else value
    return out


def make_strategy(base_dir: Path, **override: Any) -> StrategyConfig:
    """A small strategy (window 8, hidden 8, 2 epochs) with non-default features; `override` merges deep."""
    data: dict[str, Any] = {
        "name": "lstm-test",
        "symbols": list(SYMBOLS),
        "timeframe": "1h",
        "model_dir": "models/lstm-test",
        "features": {
            "return_lags": [1, 3, 6],
            "zscore_window": 10,
            "rsi_window": 8,
            "volatility_window": 12,
            "return_clip": 0.1,
        },
        "model": {"window": 8, "hidden": 8, "layers": 2, "dropout": 0.1},
        "training": {"epochs": 2, "batch_size": 64, "seed": 3, "patience": 3},
    }
    return StrategyConfig.model_validate(_merge(data, override), context={"base_dir": base_dir})


def state_dicts_equal(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def engine_windows(bars: Sequence[Bar], strategy: StrategyConfig, every: int) -> Windows:
    """Windows exactly as the daemon builds them (FeatureEngine), every `every`-th bar once warm."""
    engine = FeatureEngine(strategy.features, strategy.model.window, [bars[0].symbol])
    out = [engine.window(bar.symbol) for i, bar in enumerate(bars) if engine.update(bar) and i % every == 0]
    assert len(out) >= 4
    return np.stack(out)


def garbage_from(bars: Sequence[Bar], cut: datetime, seed: int) -> list[Bar]:
    """The same bars, except that every bar at or after `cut` gets random (but valid) prices and volume."""
    rng = np.random.default_rng(seed)
    out: list[Bar] = []
    for b in bars:
        if b.ts < cut:
            out.append(b)
            continue
        o, c = (float(x) for x in rng.uniform(20.0, 400.0, size=2))
        high = max(o, c) * (1 + float(rng.uniform(0, 0.05)))
        low = min(o, c) * (1 - float(rng.uniform(0, 0.05)))
        out.append(replace(b, open=o, high=high, low=low, close=c, volume=float(rng.integers(0, 10**8))))
    assert any(b.ts >= cut for b in out)
    return out


def card_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def symbol_segments(
    bars: Mapping[str, Sequence[Bar]], strategy: StrategyConfig
) -> list[tuple[str, int, int, int]]:
    """(symbol, first row index in Samples.rows, number of rows, first bar index) in build_samples order."""
    segments: list[tuple[str, int, int, int]] = []
    offset = 0
    for symbol in sorted(bars):
        rows, first = feature_matrix(bars[symbol], strategy.features)
        segments.append((symbol, offset, len(rows), first))
        offset += len(rows)
    return segments


@pytest.fixture(scope="module")
def bars() -> BarsBySymbol:
    """SPY and IBM, 2014-01 to 2015-06: about 2,600 bars each."""
    return {symbol: load_span(symbol) for symbol in SYMBOLS}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("project")


@pytest.fixture(scope="module")
def strategy(base_dir: Path) -> StrategyConfig:
    return make_strategy(base_dir)


@pytest.fixture(scope="module")
def trained(bars: BarsBySymbol, strategy: StrategyConfig) -> TrainResult:
    """One small real model; tests must not change its weights."""
    return train_model(bars, strategy, version="0001")


# --- samples and the split ---------------------------------------------------------------------------------


def test_targets_are_the_next_bars_open_to_close_log_return_clipped(
    bars: BarsBySymbol, base_dir: Path
) -> None:
    strategy = make_strategy(base_dir, features={"return_clip": 0.01})
    samples = build_samples(bars, strategy)
    index_of = {(symbol, b.ts): i for symbol, seq in bars.items() for i, b in enumerate(seq)}
    segments = symbol_segments(bars, strategy)
    starts = np.asarray([offset for _, offset, _, _ in segments])

    # Every sample: the target is the bar right after the window's last bar, of the same symbol.
    assert samples.targets.shape == (len(samples.ends), 1)  # one horizon: the next bar
    for end, target, target_time in zip(
        samples.ends, samples.targets[:, 0], samples.target_times, strict=True
    ):
        symbol, offset, _, first = segments[int(np.searchsorted(starts, end, side="right")) - 1]
        j = first + int(end) - offset  # the bar the window ends on
        nxt = bars[symbol][j + 1]
        assert int(samples.row_times[end]) == int(bars[symbol][j].ts.timestamp())
        assert int(target_time) == int(nxt.ts.timestamp())
        assert index_of[(symbol, datetime.fromtimestamp(int(target_time), UTC))] == j + 1
        assert target == max(-0.01, min(0.01, math.log(nxt.close / nxt.open)))

    # By hand from the CSV rows (timestamp, open, close): two plain, three clipped to +-return_clip.
    by_hand = {
        ("SPY", "2014-01-23T17:00:00Z"): math.log(182.47 / 182.72),
        ("IBM", "2014-01-23T18:00:00Z"): math.log(181.96 / 182.58),
        ("SPY", "2014-10-13T19:00:00Z"): -0.01,  # 189.69 -> 187.45: -0.0119
        ("SPY", "2014-10-16T13:00:00Z"): 0.01,  # 183.02 -> 185.12: +0.0114
        ("IBM", "2014-01-22T14:00:00Z"): 0.01,  # 180.98 -> 183.06: +0.0114
    }
    symbol_of_end = {
        int(end): symbol for symbol, offset, n, _ in segments for end in range(offset, offset + n)
    }
    found = {
        (symbol_of_end[int(end)], datetime.fromtimestamp(int(t), UTC)): float(y)
        for end, t, y in zip(samples.ends, samples.target_times, samples.targets[:, 0], strict=True)
    }
    for (symbol, ts), expected in by_hand.items():
        assert found[(symbol, datetime.fromisoformat(ts))] == pytest.approx(expected, rel=1e-12, abs=0), ts
    assert np.abs(samples.targets).max() == 0.01
    assert (np.abs(samples.targets) < 0.01).mean() > 0.9


def test_windows_never_cross_symbols(bars: BarsBySymbol, strategy: StrategyConfig) -> None:
    samples = build_samples(bars, strategy)
    window = strategy.model.window
    segments = symbol_segments(bars, strategy)
    assert samples.rows.shape == (sum(n for _, _, n, _ in segments), len(feature_names(strategy.features)))

    seen = 0
    for symbol, offset, n, first in segments:
        mine = samples.ends[(samples.ends >= offset) & (samples.ends < offset + n)]
        # A window needs `window` rows of this symbol; the symbol's last bar has no next bar to target.
        assert mine.tolist() == list(range(offset + window - 1, offset + n - 1)), symbol
        assert first + n == len(bars[symbol])
        seen += len(mine)
        rows, _ = feature_matrix(bars[symbol], strategy.features)
        assert np.array_equal(samples.rows[offset : offset + n], rows)
    assert seen == len(samples.ends) == len(samples.targets) == len(samples.target_times)

    # Within each window the bar times rise strictly and all come before the target bar.
    offsets = np.arange(-window + 1, 1)
    times = samples.row_times[samples.ends[:, None] + offsets]
    assert (np.diff(times, axis=1) > 0).all()
    assert (times[:, -1] < samples.target_times).all()


def test_the_validation_split_is_chronological(
    bars: BarsBySymbol, strategy: StrategyConfig, trained: TrainResult
) -> None:
    card = trained.card
    samples = build_samples(bars, strategy)
    cut = card_time(card.training_span["end"]).timestamp()
    train_times = samples.target_times[samples.target_times < cut]
    val_times = samples.target_times[samples.target_times >= cut]

    assert card.training["train_samples"] == len(train_times)
    assert card.training["validation_samples"] == len(val_times)
    assert train_times.max() < val_times.min()
    assert len(val_times) / len(samples.target_times) == pytest.approx(0.2, abs=0.01)

    first_ts = min(b[0].ts for b in bars.values())
    last_ts = max(b[-1].ts for b in bars.values())
    assert card_time(card.training_span["start"]) == first_ts
    assert card.validation_span["start"] == card.training_span["end"]
    assert card_time(card.validation_span["end"]) == last_ts
    assert first_ts < card_time(card.training_span["end"]) < last_ts
    assert card.data_sha256 == data_hash(bars)
    assert card.symbols == sorted(SYMBOLS)


def test_the_scaler_never_sees_bars_after_the_training_cut(
    bars: BarsBySymbol, strategy: StrategyConfig, trained: TrainResult
) -> None:
    cut = card_time(trained.card.training_span["end"])

    # The scaler is the plain mean/std of the feature rows the training windows hold, all symbols pooled:
    # with one horizon, the rows of bars whose next bar (the one a decision fills in) is before the cut.
    before = np.concatenate(
        [
            rows[[bars[s][first + i + 1].ts < cut for i in range(len(rows) - 1)] + [False]]
            for s in sorted(bars)
            for rows, first in [feature_matrix(bars[s], strategy.features)]
        ]
    )
    np.testing.assert_allclose(trained.card.scaler_mean, before.mean(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(trained.card.scaler_std, before.std(axis=0), rtol=1e-12)

    # Replace the validation tail by garbage: nothing fitted on the training part may move.
    damaged = {s: garbage_from(b, cut, seed=i) for i, (s, b) in enumerate(sorted(bars.items()))}
    runs: list[list[dict[str, float]]] = [[], []]
    first = train_model(bars, strategy, version="0001", progress=runs[0].append)
    second = train_model(damaged, strategy, version="0001", progress=runs[1].append)

    assert second.card.training_span == first.card.training_span
    assert second.card.data_sha256 != first.card.data_sha256
    assert second.card.scaler_mean == first.card.scaler_mean
    assert second.card.scaler_std == first.card.scaler_std
    assert second.card.target_scale == first.card.target_scale
    # The first epoch trains on the same scaled samples; only the validation loss sees the garbage.
    assert runs[1][0]["train_loss"] == runs[0][0]["train_loss"]
    assert runs[1][0]["val_loss"] != runs[0][0]["val_loss"]


# --- reproducibility ---------------------------------------------------------------------------------------


def test_training_is_reproducible_for_a_seed_on_cpu(bars: BarsBySymbol, base_dir: Path) -> None:
    strategy = make_strategy(base_dir, training={"seed": 11})
    a = train_model(bars, strategy, version="0001")
    torch.manual_seed(12345)  # the global RNG's state must not matter: train_model seeds what it uses
    torch.rand(7)
    b = train_model(bars, strategy, version="0001")
    assert state_dicts_equal(a.network.state_dict(), b.network.state_dict())
    assert a.card.metrics == b.card.metrics
    assert a.card.baselines == b.card.baselines
    assert a.card.training["best_epoch"] == b.card.training["best_epoch"]
    assert set(a.card.metrics) == {
        "validation_mse",
        "validation_mae",
        "validation_directional_accuracy",
        "validation_information_coefficient",
    }
    assert all(math.isfinite(v) for v in a.card.metrics.values())

    other = train_model(bars, make_strategy(base_dir, training={"seed": 12}), version="0001")
    assert not state_dicts_equal(a.network.state_dict(), other.network.state_dict())
    assert all(
        not torch.equal(a.network.state_dict()[k], other.network.state_dict()[k])
        for k in a.network.state_dict()
    )
    assert other.card.metrics != a.card.metrics


# --- the registry ------------------------------------------------------------------------------------------


def save_as(model_dir: Path, result: TrainResult, version: str) -> Path:
    return save_model(model_dir, result.network, replace(result.card, version=version))


def test_save_model_numbers_versions_and_latest_is_the_highest(tmp_path: Path, trained: TrainResult) -> None:
    model_dir = tmp_path / "models" / "lstm-test"
    assert next_version(model_dir) == "0001"
    folder = save_as(model_dir, trained, next_version(model_dir))
    assert folder == model_dir / "0001"
    assert sorted(p.name for p in folder.iterdir()) == sorted([WEIGHTS_FILE, CARD_FILE])
    assert [p.name for p in model_dir.iterdir()] == ["0001"]  # no temp folder left behind
    assert ModelCard.read(folder).version == "0001"

    assert next_version(model_dir) == "0002"
    assert save_as(model_dir, trained, next_version(model_dir)) == model_dir / "0002"
    assert latest_version(model_dir) == model_dir / "0002"
    assert list_versions(model_dir) == ["0001", "0002"]

    # Highest by number, not by save order; incomplete folders and stray names do not count.
    save_as(model_dir, trained, "0010")
    save_as(model_dir, trained, "0009")
    (model_dir / "0011").mkdir()
    (model_dir / "0011" / WEIGHTS_FILE).write_bytes((model_dir / "0010" / WEIGHTS_FILE).read_bytes())
    (model_dir / "0012").mkdir()
    (model_dir / "0012" / CARD_FILE).write_text((model_dir / "0010" / CARD_FILE).read_text())
    (model_dir / "0013").write_text("not a folder")
    (model_dir / "notes").mkdir()
    assert list_versions(model_dir) == ["0001", "0002", "0009", "0010"]
    assert latest_version(model_dir) == model_dir / "0010"


def test_saving_an_existing_version_is_refused(tmp_path: Path, trained: TrainResult) -> None:
    model_dir = tmp_path / "m"
    folder = save_as(model_dir, trained, "0001")
    before = (folder / CARD_FILE).read_bytes(), (folder / WEIGHTS_FILE).read_bytes()
    other = LSTMForecaster(trained.card.architecture["n_features"], 8, 2, 0.1)
    with pytest.raises(ModelError, match="already exists"):
        save_model(model_dir, other, replace(trained.card, version="0001", created_at="later"))
    assert ((folder / CARD_FILE).read_bytes(), (folder / WEIGHTS_FILE).read_bytes()) == before
    assert [p.name for p in model_dir.iterdir()] == ["0001"]


def test_an_incomplete_folder_does_not_block_the_next_save(tmp_path: Path, trained: TrainResult) -> None:
    model_dir = tmp_path / "m"
    save_as(model_dir, trained, "0001")
    (model_dir / "0002").mkdir()
    (model_dir / "0002" / WEIGHTS_FILE).write_bytes((model_dir / "0001" / WEIGHTS_FILE).read_bytes())
    assert latest_version(model_dir) == model_dir / "0001"
    folder = save_as(model_dir, trained, next_version(model_dir))
    assert latest_version(model_dir) == folder


def test_load_model_round_trips_weights_card_and_predictions(
    tmp_path: Path, bars: BarsBySymbol, strategy: StrategyConfig, trained: TrainResult
) -> None:
    folder = save_as(tmp_path / "m", trained, "0001")
    loaded = load_model(folder)
    assert loaded.path == folder
    assert loaded.card == trained.card
    assert not loaded.network.training
    assert state_dicts_equal(loaded.network.state_dict(), trained.network.state_dict())

    windows = engine_windows(bars["SPY"], strategy, every=53)
    got = Predictor(loaded).predict(windows)
    in_memory = Predictor(LoadedModel(trained.card, trained.network, folder)).predict(windows)
    assert got.dtype == np.float64
    assert got.shape == (len(windows), 1)
    assert np.array_equal(got, in_memory)

    # The predictor scales with the card's training statistics and undoes the target scale.
    mean = np.asarray(trained.card.scaler_mean, dtype=np.float32)
    std = np.asarray(trained.card.scaler_std, dtype=np.float32)
    with torch.inference_mode():
        raw = trained.network(torch.from_numpy((windows - mean) / std))[:, 0].double().numpy()
    np.testing.assert_allclose(got[:, 0], raw * trained.card.target_scale, rtol=1e-6, atol=1e-12)
    assert np.std(got) > 0


def _binary_garbage(path: Path) -> None:
    path.write_bytes(b"garbage" * 10)


def _text(path: Path) -> None:
    path.write_text("this is not a torch file\n" * 40)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _missing(path: Path) -> None:
    path.unlink()


def _other_architecture(path: Path) -> None:
    torch.save(LSTMForecaster(3, 4, 1, 0.0).state_dict(), path)


@pytest.mark.parametrize(
    "damage",
    [
        _truncated,
        _missing,
        _other_architecture,
        _binary_garbage,
        _text,
        _empty,
    ],
)
def test_load_of_a_corrupt_model_file_raises_model_error(
    tmp_path: Path, trained: TrainResult, damage: Callable[[Path], None]
) -> None:
    folder = save_as(tmp_path / "m", trained, "0001")
    damage(folder / WEIGHTS_FILE)
    with pytest.raises(ModelError, match="cannot load model"):
        load_model(folder)


def test_load_of_a_corrupt_card_raises_model_error(tmp_path: Path, trained: TrainResult) -> None:
    folder = save_as(tmp_path / "m", trained, "0001")
    (folder / CARD_FILE).write_text('{"name": "half a card"', encoding="utf-8")
    with pytest.raises(ModelError, match="cannot load model"):
        load_model(folder)
    (folder / CARD_FILE).write_text(trained.card.to_json().replace('"window"', '"windows"'), encoding="utf-8")
    with pytest.raises(ModelError, match="cannot load model"):
        load_model(folder)


def test_latest_version_without_a_model_says_to_train(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for model_dir in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(ModelError, match=r"no trained model in .*run `paperbot train`"):
            latest_version(model_dir)
        assert list_versions(model_dir) == []
        assert next_version(model_dir) == "0001"


# --- compatibility -----------------------------------------------------------------------------------------


def test_check_compatible_accepts_a_matching_card(
    trained: TrainResult, strategy: StrategyConfig, base_dir: Path
) -> None:
    check_compatible(trained.card, strategy)
    # Settings that do not change the network's inputs are not part of the check.
    check_compatible(trained.card, make_strategy(base_dir, entry_threshold=0.01, allow_short=True))


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"features": {"return_lags": [1, 3]}}, "features"),
        ({"features": {"zscore_window": 11}}, "features"),
        ({"features": {"rsi_window": 9}}, "features"),
        ({"model": {"window": 16}}, "window"),
        ({"timeframe": "5m"}, "timeframe"),
    ],
)
def test_check_compatible_refuses_a_card_that_differs(
    trained: TrainResult, base_dir: Path, override: dict[str, Any], named: str
) -> None:
    strategy = make_strategy(base_dir, **override)
    with pytest.raises(ModelError) as info:
        check_compatible(trained.card, strategy)
    message = str(info.value)
    assert f"{named} " in message
    for other in {"features", "window", "timeframe"} - {named}:
        assert f"{other} " not in message.replace("strategies.model.window", "")
    assert "lstm-test" in message
    assert "paperbot train" in message


def test_check_compatible_refuses_a_different_return_clip(trained: TrainResult, base_dir: Path) -> None:
    with pytest.raises(ModelError):
        check_compatible(trained.card, make_strategy(base_dir, features={"return_clip": 0.05}))


# --- the predictor -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def predictor(trained: TrainResult, base_dir: Path) -> Predictor:
    return Predictor(LoadedModel(trained.card, trained.network, base_dir), torch.device("cpu"))


def test_batched_predictions_equal_one_window_at_a_time(
    predictor: Predictor, bars: BarsBySymbol, strategy: StrategyConfig
) -> None:
    windows = np.concatenate([engine_windows(bars[s], strategy, every=41) for s in SYMBOLS])
    batched = predictor.predict(windows)
    single = np.concatenate([predictor.predict(w[None]) for w in windows])
    assert batched.shape == (len(windows), 1)
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-6)
    assert np.isfinite(batched).all()
    assert len(np.unique(batched)) > len(windows) // 2


@pytest.mark.parametrize(
    "shape",
    [(8, 9), (3, 7, 9), (3, 9, 9), (3, 8, 8), (3, 8, 10), (1, 3, 8, 9), (0, 8)],
)
def test_a_window_of_the_wrong_shape_is_refused(predictor: Predictor, shape: tuple[int, ...]) -> None:
    assert (predictor.card.window, len(predictor.card.features)) == (8, 9)
    with pytest.raises(ValueError, match="does not fit the model card"):
        predictor.predict(np.zeros(shape, dtype=np.float32))


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(ModelError, match="no CUDA device"):
            resolve_device("cuda")


# --- the bundled model -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repo_config() -> AppConfig:
    return load_config(REPO / "config.toml")


def test_the_bundled_model_matches_the_repo_config(repo_config: AppConfig) -> None:
    strategy = repo_config.strategy(None)
    assert strategy.model_dir == REPO / "models" / "lstm-equities"
    assert len(list_versions(strategy.model_dir)) >= 1
    model = load_model(latest_version(strategy.model_dir))
    card = model.card
    check_compatible(card, strategy)
    assert card.name == strategy.model_dir.name
    assert card.symbols == sorted(strategy.symbols)
    assert card.timeframe == strategy.timeframe
    assert FeatureSettings.model_validate(card.feature_settings) == strategy.features
    assert card.architecture == {"kind": "lstm", "n_features": len(card.features)} | {
        k: getattr(strategy.model, k)
        for k in ("hidden", "layers", "dropout", "bidirectional", "asset_embedding")
    }
    assert card.horizons == strategy.model.horizons
    assert len(card.scaler_mean) == len(card.scaler_std) == len(card.features)
    assert all(s > 0 for s in card.scaler_std)

    # The replay starts after everything the model saw, validation (early stopping) included.
    start = repo_config.feed.start
    assert start is not None
    assert card_time(card.training_span["end"]) <= start
    assert card_time(card.validation_span["end"]) < start
    # ... and the card names exactly the bars `paperbot train` takes for this config.
    assert card.data_sha256 == data_hash(training_bars(repo_config, None))


def test_the_bundled_model_predicts_on_real_windows(repo_config: AppConfig) -> None:
    strategy = repo_config.strategy(None)
    assert repo_config.feed.start is not None
    predictor = Predictor(load_model(latest_version(strategy.model_dir)))
    engine = FeatureEngine(strategy.features, strategy.model.window, strategy.symbols)
    assert engine.names == tuple(predictor.card.features)
    start = repo_config.feed.start - timedelta(days=30)
    stream = sorted(
        (
            b
            for s in strategy.symbols
            for b in load_span(s, start, repo_config.feed.start + timedelta(days=7))
        ),
        key=lambda b: (b.close_time, strategy.symbols.index(b.symbol)),
    )
    windows: list[Windows] = []
    for bar in stream:
        if engine.update(bar) and bar.ts >= repo_config.feed.start:
            windows.append(engine.window(bar.symbol))
    assert len(windows) > 50
    predicted = predictor.predict(np.stack(windows))
    assert np.isfinite(predicted).all()
    assert (np.abs(predicted) < strategy.features.return_clip).all()
    assert np.std(predicted) > 0


def test_losses() -> None:
    from bot.model.training import make_loss

    pred = torch.tensor([1.0, -1.0, 2.0])
    target = torch.tensor([1.0, 1.0, -1.0])
    assert float(make_loss("mse")(pred, target)) == pytest.approx((0 + 4 + 9) / 3)
    assert float(make_loss("mae")(pred, target)) == pytest.approx((0 + 2 + 3) / 3)
    # directional: the MSE plus how far the wrong-sign forecasts went (1*1 and 2*1).
    assert float(make_loss("directional")(pred, target)) == pytest.approx(13 / 3 + (0 + 1 + 2) / 3)
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("hinge")
