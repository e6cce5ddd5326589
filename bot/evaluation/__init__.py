"""Honest evaluation: metrics from equity curves and forecasts, with bootstrap confidence intervals."""

from bot.evaluation.metrics import (
    ForecastMetrics,
    PerformanceMetrics,
    block_bootstrap_ci,
    forecast_metrics,
    performance_metrics,
    periods_per_year,
    sharpe_ratio,
)

__all__ = [
    "ForecastMetrics",
    "PerformanceMetrics",
    "block_bootstrap_ci",
    "forecast_metrics",
    "performance_metrics",
    "periods_per_year",
    "sharpe_ratio",
]
