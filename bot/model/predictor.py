"""Batched inference: one forward pass for every symbol whose bar just closed."""

from __future__ import annotations

from collections.abc import Sequence
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
    """Scales windows with the card's training-set statistics and returns predicted returns per horizon."""

    def __init__(self, model: LoadedModel, device: torch.device | None = None) -> None:
        self.card = model.card
        self.device = device or torch.device("cpu")
        self._network = model.network.to(self.device).eval()
        self._mean = np.asarray(model.card.scaler_mean, dtype=np.float32)
        self._std = np.asarray(model.card.scaler_std, dtype=np.float32)
        self._scales = np.asarray(model.card.target_scales, dtype=np.float64)
        self._assets = (
            {s: i for i, s in enumerate(model.card.symbols)}
            if model.card.architecture.get("asset_embedding")
            else None
        )

    @property
    def horizons(self) -> tuple[int, ...]:
        """Bars ahead of each output column."""
        return tuple(self.card.horizons)

    def asset_index(self, symbols: Sequence[str]) -> torch.Tensor | None:
        """Each symbol's row in the asset embedding (None for a model without one)."""
        if self._assets is None:
            return None
        try:
            index = [self._assets[s] for s in symbols]
        except KeyError as exc:
            raise ModelError(
                f"model {self.card.name}/{self.card.version} has no embedding for {exc}"
            ) from None
        return torch.tensor(index, dtype=torch.long, device=self.device)

    def predict(
        self, windows: npt.NDArray[np.floating[Any]], symbols: Sequence[str] | None = None
    ) -> npt.NDArray[np.float64]:
        """(batch, window, features) raw feature windows -> (batch, horizons) predicted log returns.

        `symbols` (one per window) is needed by a multi-asset model."""
        if windows.ndim != 3 or windows.shape[1:] != (self.card.window, len(self.card.features)):
            raise ValueError(f"windows shape {windows.shape} does not fit the model card")
        assets = None
        if self._assets is not None:
            if symbols is None or len(symbols) != len(windows):
                raise ValueError("a multi-asset model needs one symbol per window")
            assets = self.asset_index(symbols)
        scaled = (np.asarray(windows, dtype=np.float32) - self._mean) / self._std
        with torch.inference_mode():
            out = self._network(torch.from_numpy(np.ascontiguousarray(scaled)).to(self.device), assets)
        return np.asarray(out.double().cpu().numpy() * self._scales, dtype=np.float64)
