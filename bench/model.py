"""The model's side: the FLOP floor of one LSTM step and how far paperbot's inference is from it, and
training throughput."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import torch

from bench.universe import Universe
from bot.bars import Bar
from bot.config import StrategyConfig
from bot.daemon import load_strategy_model
from bot.model.forecaster import model_forecaster
from bot.model.training import train_model

_SOME_TIME = datetime(2016, 1, 4, 14, tzinfo=UTC)  # only the bars' symbols matter to predict()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(call: Callable[[], object], device: torch.device, repeat: int, warm: int = 3) -> float:
    for _ in range(warm):
        call()
    _sync(device)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        _sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def matmul_rate(device: torch.device, repeat: int) -> float:
    """FLOP/s of a float32 1024 x 1024 matrix product on `device` (torch's threads as set): the best
    this machine does, the rate the floor is computed with."""
    n = 1024 if device.type == "cpu" else 8192
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    seconds = _median_seconds(lambda: torch.mm(a, b), device, repeat)
    return 2 * n**3 / seconds


def step_flops(n_features: int, hidden: int, layers: int, horizons: int, symbols: int) -> int:
    """Multiply-adds (x2) of one LSTM step of `symbols` rows: the four gates' products with the input
    and the previous state in every layer, and the head. Element-wise work (a few FLOPs per unit) is
    left out: it makes the floor lower, not higher."""
    per_row = sum(2 * 4 * hidden * ((n_features if k == 0 else hidden) + hidden) for k in range(layers))
    return symbols * (per_row + 2 * hidden * horizons)


@dataclass(frozen=True)
class InferenceRun:
    """One inference path at one size: seconds per call and its multiple of the FLOP floor."""

    path: str
    device: str
    symbols: int
    seconds: float
    floor_seconds: float

    @property
    def floor_multiple(self) -> float:
        """How many times the floor one call takes."""
        return self.seconds / self.floor_seconds


def inference(
    strategy: StrategyConfig, *, path: str, symbols: int, device: torch.device, rate: float, repeat: int
) -> InferenceRun:
    """Median seconds of the forecaster's predict for `symbols` bars closing at once, as the engine calls
    it (feature windows moving on one row a call, so the streaming path steps), on `device`."""
    names = [f"S{k:05d}" for k in range(symbols)]
    loaded = load_strategy_model(0, strategy)
    card = loaded.card
    forecaster = model_forecaster(loaded, names, device, path)
    rng = np.random.default_rng(7)
    width, window = len(card.features), card.window
    rows = rng.standard_normal((symbols, window + repeat + 8, width)).astype(np.float32)
    rows = rows * np.asarray(card.scaler_std, np.float32) + np.asarray(card.scaler_mean, np.float32)
    bars = [Bar(s, _SOME_TIME, 1, 1, 1, 1, 1, timedelta(hours=1)) for s in names]
    offset = 0

    def call() -> None:
        nonlocal offset
        forecaster.predict(bars, rows[:, offset : offset + window])
        offset += 1

    seconds = _median_seconds(call, device, repeat)
    arch = card.architecture
    flops = step_flops(width, int(arch["hidden"]), int(arch["layers"]), len(card.horizons), symbols)
    return InferenceRun(path, device.type, symbols, seconds, flops / rate)


@dataclass(frozen=True)
class TrainingRun:
    """Samples per second of training (forward, backward and optimizer step over every training sample
    of an epoch, plus the validation pass), and how many."""

    samples: int
    epochs: int
    seconds: float

    @property
    def samples_per_s(self) -> float:
        """Throughput."""
        return self.samples * self.epochs / self.seconds


def training(strategy: StrategyConfig, universe: Universe, epochs: int) -> TrainingRun:
    """The bundled strategy's training (its settings, no cross-validation) on the universe's bars."""
    settings = strategy.training.model_copy(update={"epochs": epochs, "cv_folds": 0, "patience": epochs})
    config = strategy.model_copy(update={"symbols": universe.symbols, "training": settings})
    started = time.perf_counter()
    result = train_model(universe.bars, config, version="bench")
    seconds = time.perf_counter() - started
    info = result.card.training
    return TrainingRun(int(info["train_samples"]), int(info["epochs_run"]), seconds)
