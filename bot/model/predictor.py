"""Batched inference: one forward pass for every symbol whose bar just closed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from bot.errors import ModelError
from bot.model.registry import LoadedModel


def resolve_device(setting: str) -> torch.device:
    """'auto' picks CUDA when present; 'cuda' without a GPU is an error, not a silent fallback."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise ModelError("daemon.device is 'cuda' but no CUDA device is available")
    return torch.device(setting)


class Predictor:
    """Scales windows with the card's training-set statistics and returns predicted returns."""

    def __init__(self, model: LoadedModel, device: torch.device | None = None) -> None:
        self.card = model.card
        self.device = device or torch.device("cpu")
        self._network = model.network.to(self.device).eval()
        self._mean = np.asarray(model.card.scaler_mean, dtype=np.float32)
        self._std = np.asarray(model.card.scaler_std, dtype=np.float32)
        self._scale = float(model.card.target_scale)

    def predict(self, windows: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
        """(batch, window, features) raw feature windows -> (batch,) predicted next-bar log return."""
        if windows.ndim != 3 or windows.shape[1:] != (self.card.window, len(self.card.features)):
            raise ValueError(f"windows shape {windows.shape} does not fit the model card")
        scaled = (np.asarray(windows, dtype=np.float32) - self._mean) / self._std
        with torch.inference_mode():
            out = self._network(torch.from_numpy(np.ascontiguousarray(scaled)).to(self.device))
        return np.asarray(out[:, 0].double().cpu().numpy() * self._scale, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class Prediction:
    """The model's forecast for one symbol at one bar's close."""

    strategy: str
    symbol: str
    bar_ts: datetime
    predicted_return: float
    horizon: int
    model_version: str
