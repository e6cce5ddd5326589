"""`paperbot train`: fit the LSTM on a chronological span of bars, validate on the span's tail.

Honesty rules: the split is by time, never shuffled across it; the scaler and target scale see the
training part only; the target is the return a decision at bar t can actually earn (from the next
bar's open, where the simulated broker fills, to its close)."""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from bot.bars import Bar
from bot.config import StrategyConfig
from bot.errors import OperationalError
from bot.evaluation.metrics import forecast_metrics
from bot.features import feature_matrix, feature_names
from bot.model.card import ModelCard
from bot.model.network import LSTMForecaster

TARGET = "log(close[t+1] / open[t+1]), clipped to +-return_clip"

ProgressFn = Callable[[dict[str, float]], None]


@dataclass(frozen=True)
class Samples:
    """Feature rows of all symbols stacked, and the samples (row index of a window's last row)."""

    rows: npt.NDArray[np.float64]
    row_times: npt.NDArray[np.int64]  # epoch seconds of each row's bar open
    ends: npt.NDArray[np.int64]
    targets: npt.NDArray[np.float64]
    target_times: npt.NDArray[np.int64]  # epoch seconds of the target bar's open


@dataclass(frozen=True)
class TrainResult:
    """The fitted network and its card (version still to be assigned by the registry)."""

    network: LSTMForecaster
    card: ModelCard


def data_hash(bars_by_symbol: Mapping[str, Sequence[Bar]]) -> str:
    """sha256 over the exact bars used, so a card names its data unambiguously."""
    digest = hashlib.sha256()
    for symbol in sorted(bars_by_symbol):
        for b in bars_by_symbol[symbol]:
            digest.update(
                f"{symbol},{b.ts.isoformat()},{b.open!r},{b.high!r},{b.low!r},{b.close!r},"
                f"{b.volume!r}\n".encode()
            )
    return digest.hexdigest()


def build_samples(bars_by_symbol: Mapping[str, Sequence[Bar]], strategy: StrategyConfig) -> Samples:
    """Every (window, next-bar target) pair the bars allow, per symbol, never crossing symbols."""
    window = strategy.model.window
    clip = strategy.features.return_clip
    all_rows, row_times, ends, targets, times = [], [], [], [], []
    offset = 0
    for symbol in sorted(bars_by_symbol):
        bars = bars_by_symbol[symbol]
        rows, first = feature_matrix(bars, strategy.features)
        for r in range(window - 1, len(rows)):
            j = first + r  # index of the bar the window ends on
            if j + 1 >= len(bars):
                break
            nxt = bars[j + 1]
            ends.append(offset + r)
            targets.append(max(-clip, min(clip, math.log(nxt.close / nxt.open))))
            times.append(int(nxt.ts.timestamp()))
        all_rows.append(rows)
        row_times.append(np.asarray([int(b.ts.timestamp()) for b in bars[first : first + len(rows)]]))
        offset += len(rows)
    if not ends:
        raise OperationalError(f"strategy {strategy.name}: not enough bars to build one training window")
    return Samples(
        np.concatenate(all_rows),
        np.concatenate(row_times).astype(np.int64),
        np.asarray(ends, dtype=np.int64),
        np.asarray(targets, dtype=np.float64),
        np.asarray(times, dtype=np.int64),
    )


def _metrics(pred: npt.NDArray[np.float64], true: npt.NDArray[np.float64]) -> dict[str, float]:
    m = forecast_metrics(pred, true)
    return {
        "mse": m.mse,
        "mae": m.mae,
        "directional_accuracy": m.directional_accuracy,
        "information_coefficient": m.information_coefficient,
    }


def make_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss named in [strategies.training] loss."""
    if name == "mse":
        return nn.MSELoss()
    if name == "mae":
        return nn.L1Loss()
    if name == "huber":
        return nn.HuberLoss(delta=1.0)  # targets are in units of their standard deviation
    if name == "directional":
        mse = nn.MSELoss()
        return lambda pred, target: mse(pred, target) + torch.relu(-pred * target).mean()
    raise ValueError(f"unknown loss {name!r}")


def _chunks(index: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [index[i : i + size] for i in range(0, len(index), size)]


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def train_model(
    bars_by_symbol: Mapping[str, Sequence[Bar]],
    strategy: StrategyConfig,
    *,
    version: str,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Fit on the first (1 - validation_fraction) of the span by time; early-stop on the rest."""
    settings, cfg = strategy.training, strategy.model
    torch.manual_seed(settings.seed)
    samples = build_samples(bars_by_symbol, strategy)
    cut = int(np.quantile(samples.target_times, 1 - settings.validation_fraction))
    train_idx = np.flatnonzero(samples.target_times < cut)
    val_idx = np.flatnonzero(samples.target_times >= cut)
    if len(train_idx) < settings.batch_size or len(val_idx) == 0:
        raise OperationalError(
            f"strategy {strategy.name}: {len(train_idx)} training / {len(val_idx)} validation samples "
            f"is too few (need at least batch_size={settings.batch_size} for training)"
        )

    # Scaler from rows that end before the cut only: no statistic sees the validation span.
    seen_rows = samples.rows[samples.row_times < cut]
    mean = seen_rows.mean(axis=0)
    std = np.where(seen_rows.std(axis=0) > 1e-12, seen_rows.std(axis=0), 1.0)
    target_scale = float(samples.targets[train_idx].std()) or 1.0

    rows = torch.from_numpy(((samples.rows - mean) / std).astype(np.float32))
    offsets = torch.arange(-cfg.window + 1, 1)
    ends = torch.from_numpy(samples.ends)
    y = torch.from_numpy((samples.targets / target_scale).astype(np.float32))

    def batch(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rows[ends[index, None] + offsets], y[index]

    n_features = samples.rows.shape[1]
    network = LSTMForecaster(n_features, cfg.hidden, cfg.layers, cfg.dropout, horizons=1)
    optimizer = torch.optim.Adam(
        network.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=1)
    loss_fn = make_loss(settings.loss)
    generator = torch.Generator().manual_seed(settings.seed)
    train_t = torch.from_numpy(train_idx)
    val_t = torch.from_numpy(val_idx)

    def evaluate() -> tuple[float, npt.NDArray[np.float64]]:
        network.eval()
        preds = []
        with torch.inference_mode():
            for chunk in _chunks(val_t, 4096):
                preds.append(network(batch(chunk)[0])[:, 0])
        pred = torch.cat(preds).double().numpy()
        return float(np.mean((pred - y[val_t].double().numpy()) ** 2)), pred * target_scale

    best_loss, best_state, best_epoch, stale, epochs_run = math.inf, None, 0, 0, 0
    started = time.monotonic()
    for epoch in range(1, settings.epochs + 1):
        network.train()
        total = 0.0
        order = train_t[torch.randperm(len(train_t), generator=generator)]
        for chunk in _chunks(order, settings.batch_size):
            x, target = batch(chunk)
            optimizer.zero_grad()
            loss = loss_fn(network(x)[:, 0], target)
            torch.autograd.backward(loss)
            nn.utils.clip_grad_norm_(network.parameters(), max_norm=1.0)
            optimizer.step()
            total += loss.item() * len(chunk)
        val_loss, _ = evaluate()
        scheduler.step(val_loss)
        epochs_run = epoch
        if progress:
            progress(
                {
                    "epoch": epoch,
                    "train_loss": total / len(train_t),
                    "val_loss": val_loss,
                    "lr": optimizer.param_groups[0]["lr"],
                }
            )
        if val_loss < best_loss - 1e-9:
            best_loss, best_state, best_epoch, stale = val_loss, copy.deepcopy(network.state_dict()), epoch, 0
        else:
            stale += 1
            if stale >= settings.patience:
                break
    assert best_state is not None  # at least one epoch ran
    network.load_state_dict(best_state)
    network.eval()
    _, val_pred = evaluate()
    val_true = samples.targets[val_idx]

    first_ts = min(b[0].ts for b in bars_by_symbol.values() if b)
    last_ts = max(b[-1].ts for b in bars_by_symbol.values() if b)
    card = ModelCard(
        name=strategy.model_dir.name,
        version=version,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        features=list(feature_names(strategy.features)),
        feature_settings=strategy.features.model_dump(),
        window=cfg.window,
        horizons=[1],
        target=TARGET,
        architecture={
            "kind": "lstm",
            "n_features": n_features,
            "hidden": cfg.hidden,
            "layers": cfg.layers,
            "dropout": cfg.dropout,
        },
        scaler_mean=[float(v) for v in mean],
        scaler_std=[float(v) for v in std],
        target_scale=target_scale,
        symbols=sorted(bars_by_symbol),
        timeframe=strategy.timeframe,
        training_span={"start": first_ts.isoformat(), "end": _iso(cut)},
        validation_span={"start": _iso(cut), "end": last_ts.isoformat()},
        data_sha256=data_hash(bars_by_symbol),
        training={
            **settings.model_dump(mode="json"),
            "best_epoch": best_epoch,
            "epochs_run": epochs_run,
            "train_samples": len(train_idx),
            "validation_samples": len(val_idx),
            "seconds": round(time.monotonic() - started, 1),
        },
        metrics={f"validation_{k}": v for k, v in _metrics(val_pred, val_true).items()},
        baselines={
            "zero_forecast": {
                f"validation_{k}": v for k, v in _metrics(np.zeros_like(val_true), val_true).items()
            }
        },
    )
    return TrainResult(network, card)
