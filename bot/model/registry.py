"""Model versions on disk: `models/<name>/<version>/{model.pt, card.json}`, newest = highest number."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError

from bot.config import FeatureSettings, ModelSettings, StrategyConfig
from bot.errors import ModelError
from bot.features import feature_names
from bot.model.card import CARD_FILE, WEIGHTS_FILE, ModelCard
from bot.model.network import LSTMForecaster


@dataclass(frozen=True)
class LoadedModel:
    """A network with its card, ready for the predictor."""

    card: ModelCard
    network: LSTMForecaster
    path: Path


def list_versions(model_dir: Path) -> list[str]:
    """Complete versions (both files present), oldest first."""
    if not model_dir.is_dir():
        return []
    versions = [
        p.name
        for p in model_dir.iterdir()
        if p.is_dir() and p.name.isdigit() and (p / WEIGHTS_FILE).is_file() and (p / CARD_FILE).is_file()
    ]
    return sorted(versions, key=int)


def latest_version(model_dir: Path) -> Path:
    """The newest complete version folder, or ModelError."""
    versions = list_versions(model_dir)
    if not versions:
        raise ModelError(f"no trained model in {model_dir}: run `paperbot train` first")
    return model_dir / versions[-1]


def next_version(model_dir: Path) -> str:
    """The version number a new model gets: past every numbered folder, complete or not (never reuse one)."""
    numbers = (
        [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
        if model_dir.is_dir()
        else []
    )
    return f"{max(numbers, default=0) + 1:04d}"


def save_model(model_dir: Path, network: LSTMForecaster, card: ModelCard) -> Path:
    """Write weights and card into a temp folder, then rename it in place: never a half-written version."""
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / card.version
    if target.exists():
        raise ModelError(f"model version {target} already exists")
    tmp = Path(tempfile.mkdtemp(prefix=f".{card.version}-", dir=model_dir))
    tmp.chmod(0o755)  # mkdtemp makes it private; a model is read by whichever user runs the daemon
    try:
        torch.save(network.state_dict(), tmp / WEIGHTS_FILE)
        (tmp / CARD_FILE).write_text(card.to_json(), encoding="utf-8")
        tmp.replace(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_model(folder: Path) -> LoadedModel:
    """Rebuild the network from its card and load the state_dict (weights only: no pickled code)."""
    try:
        card = ModelCard.read(folder)
        network = LSTMForecaster.from_architecture(card.architecture, len(card.horizons), len(card.symbols))
        network.load_state_dict(torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    except Exception as exc:  # a damaged file raises whatever its bytes provoke (pickle, EOF, index errors)
        first = (str(exc).strip().splitlines() or [""])[0]  # torch's errors run to several lines
        raise ModelError(f"cannot load model {folder}: {type(exc).__name__}: {first}") from exc
    network.eval()
    return LoadedModel(card, network, folder)


def check_compatible(card: ModelCard, strategy: StrategyConfig) -> None:
    """Refuse a model whose inputs differ from what the running config would feed it."""
    expected = list(feature_names(strategy.features))
    problems = []
    if card.features != expected:
        problems.append(f"features {card.features} != config {expected}")
    if card.window != strategy.model.window:
        problems.append(f"window {card.window} != config strategies.model.window {strategy.model.window}")
    # A card stores the settings it was trained with; keys added since then take their defaults.
    try:
        trained = FeatureSettings.model_validate(card.feature_settings)
    except ValidationError as exc:
        problems.append(f"unreadable feature settings in the card: {exc.errors()[0]['msg']}")
    else:
        changed = [
            k for k in FeatureSettings.model_fields if getattr(trained, k) != getattr(strategy.features, k)
        ]
        if changed:
            problems.append(f"feature settings differ in {changed}")
    if card.timeframe != strategy.timeframe:
        problems.append(f"timeframe {card.timeframe} != config {strategy.timeframe}")
    if card.horizons != strategy.model.horizons:
        problems.append(f"horizons {card.horizons} != config {strategy.model.horizons}")
    for key in ("bidirectional", "asset_embedding"):
        trained_value = card.architecture.get(key, ModelSettings.model_fields[key].default)
        if trained_value != getattr(strategy.model, key):
            problems.append(f"{key} {trained_value} != config {getattr(strategy.model, key)}")
    if card.architecture.get("asset_embedding"):
        unknown = sorted(set(strategy.symbols) - set(card.symbols))
        if unknown:
            problems.append(f"the asset embedding has no vector for {unknown}")
    if problems:
        raise ModelError(
            f"model {card.name}/{card.version} does not match strategy {strategy.name}: "
            + "; ".join(problems)
            + " (retrain with `paperbot train`)"
        )
