"""The forecasting network: a stacked LSTM over a window of feature rows, one linear output per horizon.

Options, all recorded in the card's `architecture`:
* `bidirectional`: the window is also read backwards. The window still ends at the decision bar, so
  nothing leaks, but the encoder cannot be advanced bar by bar; paperbot keeps it for offline analysis
  (`train`, `evaluate`) and never trades on it.
* `asset_embedding` (multi-asset mode): one shared encoder for every symbol, with a learned vector per
  symbol appended to each input row, so the model can tell assets apart without a network per asset.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class LSTMForecaster(nn.Module):
    """(batch, window, features) -> (batch, horizons) predicted returns, in target-scale units."""

    def __init__(
        self,
        n_features: int,
        hidden: int,
        layers: int,
        dropout: float,
        horizons: int = 1,
        *,
        bidirectional: bool = False,
        n_assets: int = 0,
        asset_embedding: int = 0,
    ) -> None:
        super().__init__()
        if asset_embedding and n_assets < 1:
            raise ValueError("an asset embedding needs the number of assets")
        self.embedding = nn.Embedding(n_assets, asset_embedding) if asset_embedding else None
        self.lstm = nn.LSTM(
            input_size=n_features + asset_embedding,
            hidden_size=hidden,
            num_layers=layers,
            dropout=dropout if layers > 1 else 0.0,  # torch applies it between layers only
            batch_first=True,
            bidirectional=bidirectional,
        )
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), horizons)

    @classmethod
    def from_architecture(cls, arch: dict[str, Any], horizons: int, n_assets: int) -> LSTMForecaster:
        """Rebuild the network a card's `architecture` describes (keys added later default to off)."""
        return cls(
            arch["n_features"],
            arch["hidden"],
            arch["layers"],
            arch["dropout"],
            horizons,
            bidirectional=arch.get("bidirectional", False),
            n_assets=n_assets if arch.get("asset_embedding", 0) else 0,
            asset_embedding=arch.get("asset_embedding", 0),
        )

    def forward(self, x: torch.Tensor, assets: torch.Tensor | None = None) -> torch.Tensor:
        """Encode the window; predict from the final hidden state of the top layer (both directions).

        `assets`: (batch,) index of each window's symbol in the card's `symbols`, in multi-asset mode."""
        if self.embedding is not None:
            if assets is None:
                raise ValueError("this model has an asset embedding: pass the asset index of each window")
            vectors = self.embedding(assets)[:, None, :].expand(-1, x.shape[1], -1)
            x = torch.cat((x, vectors), dim=2)
        _, (h_n, _) = self.lstm(x)
        # h_n: (layers * directions, batch, hidden); the top layer's directions come last.
        top = torch.cat((h_n[-2], h_n[-1]), dim=1) if self.lstm.bidirectional else h_n[-1]
        result: torch.Tensor = self.head(top)
        return result
