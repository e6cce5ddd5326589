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
from typing import Any

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
from bot.model.splits import Split, holdout, purged_kfold, walk_forward

TARGET = (
    "log(close[t+h] / open[t+1]) for each horizon h, clipped to +-return_clip*sqrt(h), scaled by its "
    "training standard deviation"
)

ProgressFn = Callable[[dict[str, float]], None]


@dataclass(frozen=True)
class Samples:
    """Feature rows of all symbols stacked, and the samples (row index of a window's last row)."""

    rows: npt.NDArray[np.float64]
    row_times: npt.NDArray[np.int64]  # epoch seconds of each row's bar open
    ends: npt.NDArray[np.int64]
    targets: npt.NDArray[np.float64]  # (samples, horizons)
    target_times: npt.NDArray[np.int64]  # epoch seconds of the bar the order fills in (label start)
    target_end_times: npt.NDArray[np.int64]  # epoch seconds of the longest horizon's last bar (label end)
    assets: npt.NDArray[np.int64]  # each sample's symbol, as its index in sorted(symbols)


@dataclass(frozen=True)
class TrainResult:
    """The fitted network and its card (version still to be assigned by the registry)."""

    network: LSTMForecaster
    card: ModelCard


class _Windows:
    """Every sample's feature rows scaled once with one scaler, cut into windows on demand."""

    def __init__(
        self, samples: Samples, mean: npt.NDArray[np.float64], std: npt.NDArray[np.float64], window: int
    ) -> None:
        self.mean, self.std = mean, std
        self._rows = torch.from_numpy(((samples.rows - mean) / std).astype(np.float32))
        self._ends = torch.from_numpy(samples.ends)
        self._assets = torch.from_numpy(samples.assets)
        self._offsets = torch.arange(-window + 1, 1)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(windows, asset indices) of the samples `index`."""
        return self._rows[self._ends[index, None] + self._offsets], self._assets[index]

    def predict(self, network: LSTMForecaster, index: torch.Tensor) -> npt.NDArray[np.float64]:
        """The network's outputs (target-scale units) for the samples `index`, in chunks."""
        network.eval()
        with torch.inference_mode():
            preds = [network(*self.batch(chunk)) for chunk in _chunks(index, 4096)]
        return torch.cat(preds).double().numpy()


@dataclass(frozen=True)
class _Fit:
    """One fitted network with the statistics it was fitted with and its validation predictions."""

    network: LSTMForecaster
    windows: _Windows  # the samples scaled with this fit's scaler
    target_scales: npt.NDArray[np.float64]
    best_epoch: int
    epochs_run: int
    val_pred: npt.NDArray[np.float64]  # (validation samples, horizons), in return units


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
    """Every (window, targets at each horizon) pair the bars allow, per symbol, never crossing symbols."""
    window = strategy.model.window
    horizons = strategy.model.horizons
    longest = max(horizons)
    clips = [strategy.features.return_clip * math.sqrt(h) for h in horizons]
    all_rows, row_times, ends, targets, times, end_times, assets = [], [], [], [], [], [], []
    offset = 0
    for asset, symbol in enumerate(sorted(bars_by_symbol)):
        bars = bars_by_symbol[symbol]
        rows, first = feature_matrix(bars, strategy.features)
        for r in range(window - 1, len(rows)):
            j = first + r  # index of the bar the window ends on
            if j + longest >= len(bars):
                break
            entry = bars[j + 1].open
            ends.append(offset + r)
            targets.append(
                [
                    max(-c, min(c, math.log(bars[j + h].close / entry)))
                    for h, c in zip(horizons, clips, strict=True)
                ]
            )
            times.append(int(bars[j + 1].ts.timestamp()))
            end_times.append(int(bars[j + longest].ts.timestamp()))
            assets.append(asset)
        all_rows.append(rows)
        row_times.append(np.asarray([int(b.ts.timestamp()) for b in bars[first : first + len(rows)]]))
        offset += len(rows)
    if not ends:
        raise OperationalError(f"strategy {strategy.name}: not enough bars to build one training window")
    return Samples(
        np.concatenate(all_rows),
        np.concatenate(row_times).astype(np.int64),
        np.asarray(ends, dtype=np.int64),
        np.asarray(targets, dtype=np.float64).reshape(len(ends), len(horizons)),
        np.asarray(times, dtype=np.int64),
        np.asarray(end_times, dtype=np.int64),
        np.asarray(assets, dtype=np.int64),
    )


def _metrics(
    pred: npt.NDArray[np.float64], true: npt.NDArray[np.float64], horizons: Sequence[int]
) -> dict[str, float]:
    """validation_{mse,mae,directional_accuracy,information_coefficient} for horizon 1, and the same with
    an h{h}_ prefix for each longer horizon."""
    out: dict[str, float] = {}
    for k, h in enumerate(horizons):
        m = forecast_metrics(pred[:, k], true[:, k])
        prefix = "validation_" if h == 1 else f"validation_h{h}_"
        out |= {
            f"{prefix}mse": m.mse,
            f"{prefix}mae": m.mae,
            f"{prefix}directional_accuracy": m.directional_accuracy,
            f"{prefix}information_coefficient": m.information_coefficient,
        }
    return out


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


def _fit(
    samples: Samples,
    strategy: StrategyConfig,
    split: Split,
    progress: ProgressFn | None,
    tag: Mapping[str, float] | None = None,
) -> _Fit:
    """Fit one network on split.train, early-stopping on split.test. Every statistic (scaler, target
    scales) comes from the training samples only: the scaler from exactly the rows their windows hold."""
    settings, cfg = strategy.training, strategy.model
    torch.manual_seed(settings.seed)
    offsets = np.arange(-cfg.window + 1, 1)
    seen = np.zeros(len(samples.rows), dtype=bool)
    seen[(samples.ends[split.train, None] + offsets).ravel()] = True
    seen_rows = samples.rows[seen]
    mean = seen_rows.mean(axis=0)
    std = np.where(seen_rows.std(axis=0) > 1e-12, seen_rows.std(axis=0), 1.0)
    target_scales = samples.targets[split.train].std(axis=0)
    target_scales = np.where(target_scales > 0, target_scales, 1.0)

    windows = _Windows(samples, mean, std, cfg.window)
    y = torch.from_numpy((samples.targets / target_scales).astype(np.float32))

    network = LSTMForecaster(
        samples.rows.shape[1],
        cfg.hidden,
        cfg.layers,
        cfg.dropout,
        len(cfg.horizons),
        bidirectional=cfg.bidirectional,
        n_assets=int(samples.assets.max()) + 1,
        asset_embedding=cfg.asset_embedding,
    )
    optimizer = torch.optim.Adam(
        network.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=1)
    loss_fn = make_loss(settings.loss)
    generator = torch.Generator().manual_seed(settings.seed)
    train_t = torch.from_numpy(split.train)
    val_t = torch.from_numpy(split.test)

    def evaluate() -> tuple[float, npt.NDArray[np.float64]]:
        pred = windows.predict(network, val_t)
        return float(np.mean((pred - y[val_t].double().numpy()) ** 2)), pred * target_scales

    best_loss, best_state, best_epoch, stale, epochs_run = math.inf, None, 0, 0, 0
    for epoch in range(1, settings.epochs + 1):
        network.train()
        total = 0.0
        order = train_t[torch.randperm(len(train_t), generator=generator)]
        for chunk in _chunks(order, settings.batch_size):
            x, a = windows.batch(chunk)
            target = y[chunk]
            optimizer.zero_grad()
            loss = loss_fn(network(x, a), target)
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
                    **(tag or {}),
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
    return _Fit(network, windows, target_scales, best_epoch, epochs_run, val_pred)


def _check_sizes(strategy: StrategyConfig, split: Split, what: str) -> None:
    if len(split.train) < strategy.training.batch_size or len(split.test) == 0:
        raise OperationalError(
            f"strategy {strategy.name}: {what} has {len(split.train)} training / {len(split.test)} "
            f"validation samples, too few (need at least batch_size={strategy.training.batch_size} "
            "for training)"
        )


def cv_splits(samples: Samples, strategy: StrategyConfig) -> list[Split]:
    """The folds [strategies.training] cv and cv_folds ask for, purged and embargoed."""
    settings = strategy.training
    embargo = int(strategy.embargo.total_seconds())
    if settings.cv == "purged_kfold":
        return purged_kfold(samples.target_times, samples.target_end_times, settings.cv_folds, embargo)
    rolling = settings.rolling_days * 86_400 if settings.walk_forward == "rolling" else None
    return walk_forward(samples.target_times, samples.target_end_times, settings.cv_folds, embargo, rolling)


def cross_validate(
    samples: Samples, strategy: StrategyConfig, progress: ProgressFn | None = None
) -> dict[str, Any]:
    """Fit once per fold (early stopping on the purged tail of the fold's own training samples) and score
    on the fold's test block; the card's `cross_validation`."""
    horizons = strategy.model.horizons
    folds: list[dict[str, Any]] = []
    for k, split in enumerate(cv_splits(samples, strategy), start=1):
        inner, _ = holdout(
            samples.target_times[split.train],
            samples.target_end_times[split.train],
            strategy.training.validation_fraction,
        )
        fit_split = Split(split.train[inner.train], split.train[inner.test])
        _check_sizes(strategy, fit_split, f"cv fold {k}")
        fit = _fit(samples, strategy, fit_split, progress, {"fold": k})
        test_pred = fit.windows.predict(fit.network, torch.from_numpy(split.test)) * fit.target_scales
        metrics = _metrics(test_pred, samples.targets[split.test], horizons)
        folds.append(
            {
                "fold": k,
                "train_samples": len(split.train),
                "test_samples": len(split.test),
                "test_start": _iso(int(samples.target_times[split.test].min())),
                "test_end": _iso(int(samples.target_end_times[split.test].max())),
                "metrics": {key.replace("validation_", "test_"): v for key, v in metrics.items()},
            }
        )
    keys = folds[0]["metrics"].keys() if folds else []
    return {
        "method": strategy.training.cv,
        "walk_forward": strategy.training.walk_forward if strategy.training.cv == "walk_forward" else None,
        "embargo_seconds": int(strategy.embargo.total_seconds()),
        "folds": folds,
        "mean": {key: float(np.mean([f["metrics"][key] for f in folds])) for key in keys},
    }


def train_model(
    bars_by_symbol: Mapping[str, Sequence[Bar]],
    strategy: StrategyConfig,
    *,
    version: str,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Fit on the first (1 - validation_fraction) of the span by time, purged of labels that reach into the
    rest; early-stop on the rest. With cv_folds, cross-validate first and put the folds in the card."""
    settings, cfg = strategy.training, strategy.model
    started = time.monotonic()
    samples = build_samples(bars_by_symbol, strategy)
    split, cut = holdout(samples.target_times, samples.target_end_times, settings.validation_fraction)
    _check_sizes(strategy, split, "the training span")
    cross_validation = cross_validate(samples, strategy, progress) if settings.cv_folds else {}
    fit = _fit(samples, strategy, split, progress)
    val_true = samples.targets[split.test]

    first_ts = min(b[0].ts for b in bars_by_symbol.values() if b)
    last_ts = max(b[-1].ts for b in bars_by_symbol.values() if b)
    card = ModelCard(
        name=strategy.model_dir.name,
        version=version,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        features=list(feature_names(strategy.features)),
        feature_settings=strategy.features.model_dump(),
        window=cfg.window,
        horizons=list(cfg.horizons),
        target=TARGET,
        architecture={
            "kind": "lstm",
            "n_features": samples.rows.shape[1],
            "hidden": cfg.hidden,
            "layers": cfg.layers,
            "dropout": cfg.dropout,
            "bidirectional": cfg.bidirectional,
            "asset_embedding": cfg.asset_embedding,
        },
        scaler_mean=[float(v) for v in fit.windows.mean],
        scaler_std=[float(v) for v in fit.windows.std],
        target_scales=[float(v) for v in fit.target_scales],
        symbols=sorted(bars_by_symbol),
        timeframe=strategy.timeframe,
        training_span={"start": first_ts.isoformat(), "end": _iso(cut)},
        validation_span={"start": _iso(cut), "end": last_ts.isoformat()},
        data_sha256=data_hash(bars_by_symbol),
        training={
            **settings.model_dump(mode="json"),
            "best_epoch": fit.best_epoch,
            "epochs_run": fit.epochs_run,
            "train_samples": len(split.train),
            "validation_samples": len(split.test),
            "embargo_seconds": int(strategy.embargo.total_seconds()),
            "seconds": round(time.monotonic() - started, 1),
            "cross_validation": cross_validation,
        },
        metrics=_metrics(fit.val_pred, val_true, cfg.horizons),
        baselines={"zero_forecast": _metrics(np.zeros_like(val_true), val_true, cfg.horizons)},
    )
    return TrainResult(fit.network, card)
