"""The model's options on small real models and real bars: multi-horizon heads, purged validation and
cross-validation, the multi-asset embedding, the offline-only bidirectional encoder, streaming inference in
the engine's forecaster, and leakage (changing future bars changes nothing earlier)."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bot.bars import Bar
from bot.config import StrategyConfig, parse_config
from bot.daemon import load_strategy_model
from bot.errors import ConfigError, ModelError
from bot.features import FeatureEngine, feature_matrix
from bot.feeds.replay import load_csv
from bot.model import LoadedModel, Predictor
from bot.model.forecaster import StreamingForecaster
from bot.model.registry import check_compatible, load_model, save_model
from bot.model.streaming import StreamingPredictor
from bot.model.training import TrainResult, build_samples, train_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data" / "equities-1h"
HOUR = timedelta(hours=1)
SYMBOLS = ("SPY", "IBM")
SPAN = (datetime(2014, 1, 1, tzinfo=UTC), datetime(2015, 1, 1, tzinfo=UTC))

BarsBySymbol = dict[str, list[Bar]]


def load_span(symbol: str) -> list[Bar]:
    bars, problems = load_csv(DATA / f"{symbol}.csv", symbol, HOUR)
    assert problems == []
    return [b for b in bars if SPAN[0] <= b.ts < SPAN[1]]


def make_strategy(base_dir: Path, model: dict[str, Any] | None = None, **training: Any) -> StrategyConfig:
    """Window 8, hidden 8, 2 epochs: small enough to train in seconds."""
    data: dict[str, Any] = {
        "name": "opts",
        "symbols": list(SYMBOLS),
        "timeframe": "1h",
        "model_dir": "models/opts",
        "features": {"return_lags": [1, 3], "zscore_window": 10, "rsi_window": 8, "volatility_window": 12},
        "model": {"window": 8, "hidden": 8, "layers": 2, "dropout": 0.0} | (model or {}),
        "training": {"epochs": 2, "batch_size": 64, "seed": 5, "patience": 2} | training,
    }
    return StrategyConfig.model_validate(data, context={"base_dir": base_dir})


@pytest.fixture(scope="module")
def bars() -> BarsBySymbol:
    return {symbol: load_span(symbol) for symbol in SYMBOLS}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("opts")


@pytest.fixture(scope="module")
def multi(bars: BarsBySymbol, base_dir: Path) -> tuple[StrategyConfig, TrainResult]:
    """Horizons 1, 5 and 20 with a per-asset embedding, cross-validated by purged k-fold."""
    strategy = make_strategy(base_dir, {"horizons": [20, 1, 5], "asset_embedding": 3}, cv_folds=3)
    return strategy, train_model(bars, strategy, version="0001")


def engine_windows(bars: list[Bar], strategy: StrategyConfig) -> tuple[list[Bar], np.ndarray]:
    """Every decision bar's window, exactly as the daemon's FeatureEngine builds it."""
    engine = FeatureEngine(strategy.features, strategy.model.window, [bars[0].symbol])
    ready = [(b, engine.window(b.symbol)) for b in bars if engine.update(b)]
    return [b for b, _ in ready], np.stack([w for _, w in ready])


# --- multi-horizon targets, purging ------------------------------------------------------------------------


def test_each_horizon_targets_the_return_from_the_next_open_to_the_close_h_bars_on(
    bars: BarsBySymbol, base_dir: Path
) -> None:
    strategy = make_strategy(base_dir, {"horizons": [1, 3, 7]})
    assert strategy.model.horizons == [1, 3, 7]
    samples = build_samples(bars, strategy)
    assert samples.targets.shape == (len(samples.ends), 3)
    spy = bars["SPY"]
    spy_samples = np.flatnonzero(samples.assets == sorted(SYMBOLS).index("SPY"))
    _, first = feature_matrix(spy, strategy.features)
    offset = samples.ends[spy_samples[0]] - (strategy.model.window - 1)  # IBM's rows come first
    clip = strategy.features.return_clip
    for k in (0, 17, 400, 1000):
        i = spy_samples[k]
        j = first + strategy.model.window - 1 + k  # the bar the k-th SPY window ends on
        assert samples.ends[i] - offset == strategy.model.window - 1 + k
        assert samples.target_times[i] == int(spy[j + 1].ts.timestamp())
        assert samples.target_end_times[i] == int(spy[j + 7].ts.timestamp())
        for col, h in enumerate((1, 3, 7)):
            expected = math.log(spy[j + h].close / spy[j + 1].open)
            bound = clip * math.sqrt(h)
            assert samples.targets[i, col] == max(-bound, min(bound, expected))
    # No sample needs a bar the series does not have: the last needs 7 bars after its window.
    assert samples.target_end_times[spy_samples].max() == int(spy[-1].ts.timestamp())


def test_training_purges_labels_that_reach_into_validation(
    bars: BarsBySymbol, multi: tuple[StrategyConfig, TrainResult]
) -> None:
    strategy, trained = multi
    card = trained.card
    samples = build_samples(bars, strategy)
    cut = datetime.fromisoformat(card.training_span["end"]).timestamp()
    assert card.training["train_samples"] == int((samples.target_end_times < cut).sum())
    assert card.training["validation_samples"] == int((samples.target_times >= cut).sum())
    # Per symbol, the 19 samples whose 20-bar labels straddle the cut are used for neither.
    purged = ((samples.target_times < cut) & (samples.target_end_times >= cut)).sum()
    assert purged == 2 * 19
    assert card.training["embargo_seconds"] == 20 * 3600
    assert card.horizons == [1, 5, 20]
    assert len(card.target_scales) == 3
    assert card.target_scales[0] < card.target_scales[1] < card.target_scales[2]  # wider at longer horizons
    expected_keys = {
        f"validation_{prefix}{m}"
        for prefix in ("", "h5_", "h20_")
        for m in ("mse", "mae", "directional_accuracy", "information_coefficient")
    }
    assert set(card.metrics) == expected_keys
    assert set(card.baselines["zero_forecast"]) == expected_keys


def test_cross_validation_is_in_the_card(multi: tuple[StrategyConfig, TrainResult]) -> None:
    _, trained = multi
    cv = trained.card.training["cross_validation"]
    assert cv["method"] == "purged_kfold"
    assert cv["embargo_seconds"] == 20 * 3600
    assert len(cv["folds"]) == 3
    starts = [f["test_start"] for f in cv["folds"]]
    assert starts == sorted(starts)
    for fold in cv["folds"]:
        assert fold["test_samples"] > 0 and fold["train_samples"] > 0
        assert all(math.isfinite(v) for v in fold["metrics"].values())
        assert "test_h20_information_coefficient" in fold["metrics"]
    assert cv["mean"]["test_mse"] == pytest.approx(np.mean([f["metrics"]["test_mse"] for f in cv["folds"]]))


# --- multi-asset -------------------------------------------------------------------------------------------


def test_the_asset_embedding_tells_symbols_apart(
    bars: BarsBySymbol, base_dir: Path, multi: tuple[StrategyConfig, TrainResult]
) -> None:
    strategy, trained = multi
    folder = save_model(base_dir / "saved", trained.network, trained.card)
    loaded = load_model(folder)
    assert loaded.network.embedding is not None
    predictor = Predictor(loaded)
    _, windows = engine_windows(bars["SPY"], strategy)
    windows = windows[::50]
    as_spy = predictor.predict(windows, ["SPY"] * len(windows))
    as_ibm = predictor.predict(windows, ["IBM"] * len(windows))
    assert as_spy.shape == (len(windows), 3)
    assert not np.allclose(as_spy, as_ibm)  # the same window means something else for another asset
    with pytest.raises(ValueError, match="one symbol per window"):
        predictor.predict(windows)
    with pytest.raises(ModelError, match="no embedding"):
        predictor.predict(windows[:1], ["QQQ"])
    other = make_strategy(base_dir, {"horizons": [1, 5, 20], "asset_embedding": 3})
    other = other.model_copy(update={"symbols": ["SPY", "QQQ"]})
    with pytest.raises(ModelError, match="no vector for"):
        check_compatible(loaded.card, other)
    check_compatible(loaded.card, strategy)


def test_streaming_a_multi_asset_multi_horizon_model_starts_at_the_window_path(
    bars: BarsBySymbol, multi: tuple[StrategyConfig, TrainResult]
) -> None:
    strategy, trained = multi
    loaded = LoadedModel(trained.card, trained.network, Path())
    forecaster = StreamingForecaster(StreamingPredictor(loaded, list(SYMBOLS)))
    predictor = Predictor(loaded)
    assert forecaster.horizons == (1, 5, 20)
    ready, windows = engine_windows(bars["IBM"], strategy)
    first = forecaster.predict(ready[:1], windows[:1])
    np.testing.assert_allclose(first, predictor.predict(windows[:1], ["IBM"]), rtol=1e-5, atol=1e-9)
    streamed = np.concatenate(
        [forecaster.predict([b], w[None]) for b, w in zip(ready[1:300], windows[1:300], strict=False)]
    )
    assert forecaster.restarts == 1
    by_window = predictor.predict(windows[1:300], ["IBM"] * 299)
    assert np.corrcoef(streamed[:, 0], by_window[:, 0])[0, 1] > 0.9
    # A window that does not continue the last one (a gap, a rescale, a restart) restarts the stream.
    again = forecaster.predict(ready[:1], windows[:1])
    assert forecaster.restarts == 2
    np.testing.assert_allclose(again, first, rtol=1e-6, atol=1e-12)


# --- bidirectional: offline only ---------------------------------------------------------------------------


def test_a_bidirectional_model_trains_but_never_trades(bars: BarsBySymbol, base_dir: Path) -> None:
    strategy = make_strategy(base_dir, {"bidirectional": True})
    trained = train_model(bars, strategy, version="0001")
    assert trained.network.lstm.bidirectional
    assert trained.card.architecture["bidirectional"] is True
    folder = save_model(strategy.model_dir, trained.network, trained.card)
    loaded = load_model(folder)
    _, windows = engine_windows(bars["SPY"], strategy)
    assert np.isfinite(Predictor(loaded).predict(windows[:10])).all()
    with pytest.raises(ValueError, match="unidirectional"):
        StreamingPredictor(loaded, ["SPY"])
    with pytest.raises(ConfigError) as refused:
        load_strategy_model(0, strategy)
    assert refused.value.key == "strategies[0].model.bidirectional"
    # A config that asks for a causal model does not silently load the bidirectional one either.
    with pytest.raises(ModelError, match="bidirectional True != config False"):
        check_compatible(loaded.card, make_strategy(base_dir))


@pytest.mark.parametrize(
    ("model", "training", "key", "reason"),
    [
        ({"horizons": [5, 20]}, {}, "strategies[0].model.horizons", "must include 1"),
        ({"horizons": [1, 1]}, {}, "strategies[0].model.horizons", "must not repeat"),
        ({"bidirectional": True, "inference": "streaming"}, {}, "strategies[0].model", "cannot stream"),
        ({}, {"cv_folds": 1}, "strategies[0].training", "at least 2 folds"),
        ({"asset_embedding": 65}, {}, "strategies[0].model.asset_embedding", "less than or equal"),
    ],
)
def test_bad_model_options_name_the_key(
    tmp_path: Path, model: dict[str, Any], training: dict[str, Any], key: str, reason: str
) -> None:
    data = {
        "feed": {"kind": "replay", "data_dir": str(DATA)},
        "strategies": [
            {"name": "s", "symbols": ["SPY"], "model_dir": "m", "model": model, "training": training}
        ],
    }
    with pytest.raises(ConfigError) as error:
        parse_config(data, tmp_path)
    assert error.value.key == key
    assert reason in error.value.reason


# --- leakage -----------------------------------------------------------------------------------------------


def test_changing_future_bars_changes_no_earlier_feature_scaler_or_prediction(
    bars: BarsBySymbol, base_dir: Path, multi: tuple[StrategyConfig, TrainResult]
) -> None:
    strategy, trained = multi
    predictor = Predictor(LoadedModel(trained.card, trained.network, Path()))
    spy = bars["SPY"]
    cut = spy[len(spy) * 2 // 3].ts
    rng = np.random.default_rng(1)
    # Shuffle the bars after the cut (their prices, in a new order, at the old times) and scale them.
    later = [b for b in spy if b.ts >= cut]
    order = rng.permutation(len(later))
    altered = [b for b in spy if b.ts < cut] + [
        replace(
            b, open=later[i].open * 3, high=later[i].high * 3, low=later[i].low * 3, close=later[i].close * 3
        )
        for b, i in zip(later, order, strict=True)
    ]
    ready_a, windows_a = engine_windows(spy, strategy)
    ready_b, windows_b = engine_windows(altered, strategy)
    before = sum(1 for b in ready_a if b.ts < cut)
    assert [b.ts for b in ready_a[:before]] == [b.ts for b in ready_b[:before]]
    np.testing.assert_array_equal(windows_a[:before], windows_b[:before])
    np.testing.assert_array_equal(
        predictor.predict(windows_a[:before], ["SPY"] * before),
        predictor.predict(windows_b[:before], ["SPY"] * before),
    )
    assert not np.array_equal(windows_a[before:], windows_b[before:])
