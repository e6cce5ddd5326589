"""The model card: everything needed to reuse, check and judge a trained model, stored beside it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CARD_FILE = "card.json"
WEIGHTS_FILE = "model.pt"


@dataclass(frozen=True)
class ModelCard:
    """What a model was trained on and how, and how well it did out of sample."""

    name: str
    version: str
    created_at: str
    features: list[str]
    feature_settings: dict[str, Any]
    window: int
    horizons: list[int]
    target: str
    architecture: dict[str, Any]
    scaler_mean: list[float]
    scaler_std: list[float]
    target_scales: list[float]  # per horizon: the training targets' standard deviation
    symbols: list[str]
    timeframe: str
    training_span: dict[str, str]
    validation_span: dict[str, str]
    data_sha256: str
    training: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)  # the latest `paperbot evaluate` report

    @property
    def target_scale(self) -> float:
        """The decision horizon's (1 bar) target scale."""
        return self.target_scales[self.horizons.index(1)]

    @property
    def bidirectional(self) -> bool:
        """Whether the encoder reads the window both ways (offline analysis only)."""
        return bool(self.architecture.get("bidirectional", False))

    def to_json(self) -> str:
        """Pretty JSON, stable key order."""
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        """Parse a card; unknown keys are an error so a newer card is not half-read."""
        data = json.loads(text)
        if "target_scale" in data:  # cards written before multi-horizon heads
            data["target_scales"] = [data.pop("target_scale")]
        return cls(**data)

    @classmethod
    def read(cls, folder: Path) -> ModelCard:
        """The card in a version folder."""
        return cls.from_json((folder / CARD_FILE).read_text(encoding="utf-8"))
