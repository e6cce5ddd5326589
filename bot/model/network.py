"""The forecasting network: a stacked LSTM over a window of feature rows, a linear head per horizon."""

from __future__ import annotations

import torch
from torch import nn


class LSTMForecaster(nn.Module):
    """(batch, window, features) -> (batch, horizons) predicted returns, in target-scale units."""

    def __init__(self, n_features: int, hidden: int, layers: int, dropout: float, horizons: int = 1) -> None:
        super().__init__()
        self.lstm = nn.LSTM(
            input_size=n_features,
            hidden_size=hidden,
            num_layers=layers,
            dropout=dropout if layers > 1 else 0.0,  # torch applies it between layers only
            batch_first=True,
        )
        self.head = nn.Linear(hidden, horizons)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode the window; predict from the last step's hidden state."""
        out, _ = self.lstm(x)
        result: torch.Tensor = self.head(out[:, -1, :])
        return result
