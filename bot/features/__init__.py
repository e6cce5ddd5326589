"""The feature stage: incremental, finite-memory indicators shared by training and live trading."""

from __future__ import annotations

from bot.features.engine import FeatureEngine, SymbolFeatures, feature_matrix, feature_names
from bot.features.outliers import Outlier

__all__ = ["FeatureEngine", "Outlier", "SymbolFeatures", "feature_matrix", "feature_names"]
