"""Metrics of a trading record and of a forecast, and block-bootstrap confidence intervals.

Conventions, stated once:
- returns are simple per-bar returns of marked-to-market equity, r_t = E_t / E_{t-1} - 1;
- annualisation uses the bars a year the data actually has (count over calendar span), not a guess,
  so hourly equities with overnight gaps and 24/7 crypto are both right;
- Sharpe and Sortino use a zero risk-free rate; Sortino's downside deviation is the root mean square of
  min(r, 0) over all bars (Sortino and Price's definition);
- drawdown is measured from the running peak of equity, as a positive fraction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
SECONDS_PER_YEAR = 365.25 * 24 * 3600


def periods_per_year(times: Sequence[datetime]) -> float:
    """Bars per year in this record: (n - 1) intervals over the calendar span between first and last."""
    if len(times) < 2:
        raise ValueError("need at least two timestamps to annualise")
    span = (times[-1] - times[0]).total_seconds()
    if span <= 0:
        raise ValueError("timestamps must increase")
    return (len(times) - 1) * SECONDS_PER_YEAR / span


def sharpe_ratio(returns: FloatArray, per_year: float) -> float:
    """Annualised mean over standard deviation (ddof=1); 0 for a record without variance."""
    if returns.size < 2:
        return 0.0
    std = float(returns.std(ddof=1))
    return 0.0 if std == 0 else float(returns.mean()) / std * math.sqrt(per_year)


def sortino_ratio(returns: FloatArray, per_year: float) -> float:
    """Annualised mean over downside deviation; 0 without losses to measure."""
    downside = math.sqrt(float(np.mean(np.minimum(returns, 0.0) ** 2))) if returns.size else 0.0
    return 0.0 if downside == 0 else float(returns.mean()) / downside * math.sqrt(per_year)


def max_drawdown(equity: FloatArray) -> float:
    """Largest fall from a running peak, as a fraction of that peak."""
    if equity.size == 0:
        return 0.0
    peaks = np.maximum.accumulate(equity)
    return float(np.max((peaks - equity) / peaks))


@dataclass(frozen=True, slots=True)
class PerformanceMetrics:
    """What an equity curve did. Every field is a plain float, so the card and JSON hold it as is."""

    total_return: float
    annual_return: float
    annual_volatility: float
    sharpe: float
    sortino: float
    max_drawdown: float
    calmar: float
    turnover: float
    costs: float
    bars: int
    years: float

    def as_dict(self) -> dict[str, float]:
        """Field name to value."""
        return {k: float(v) for k, v in asdict(self).items()}


def performance_metrics(
    times: Sequence[datetime],
    equity: Sequence[float] | FloatArray,
    *,
    traded_notional: float = 0.0,
    costs: float = 0.0,
) -> PerformanceMetrics:
    """Metrics of one equity curve (one point per bar, marked to market).

    `turnover` is traded notional per year over mean equity (1.0: the book was traded through once a year);
    `costs` is commissions plus slippage paid, as a fraction of starting equity."""
    curve = np.asarray(equity, dtype=np.float64)
    if curve.size < 2 or len(times) != curve.size:
        raise ValueError("need an equity curve of at least two points with one time each")
    if np.any(curve <= 0):
        raise ValueError("equity must stay positive to compute returns")
    per_year = periods_per_year(times)
    returns = curve[1:] / curve[:-1] - 1.0
    years = (times[-1] - times[0]).total_seconds() / SECONDS_PER_YEAR
    total = float(curve[-1] / curve[0] - 1.0)
    annual = (curve[-1] / curve[0]) ** (1.0 / years) - 1.0
    drawdown = max_drawdown(curve)
    return PerformanceMetrics(
        total_return=total,
        annual_return=float(annual),
        annual_volatility=float(returns.std(ddof=1) * math.sqrt(per_year)) if returns.size > 1 else 0.0,
        sharpe=sharpe_ratio(returns, per_year),
        sortino=sortino_ratio(returns, per_year),
        max_drawdown=drawdown,
        calmar=float(annual / drawdown) if drawdown > 0 else 0.0,
        turnover=float(traded_notional / years / curve.mean()),
        costs=float(costs / curve[0]),
        bars=int(curve.size),
        years=float(years),
    )


@dataclass(frozen=True, slots=True)
class ForecastMetrics:
    """How well predicted returns matched realized ones."""

    mse: float
    mae: float
    directional_accuracy: float
    information_coefficient: float
    samples: int

    def as_dict(self) -> dict[str, float]:
        """Field name to value."""
        return {k: float(v) for k, v in asdict(self).items()}


def forecast_metrics(
    predicted: Sequence[float] | FloatArray, realized: Sequence[float] | FloatArray
) -> ForecastMetrics:
    """MSE, MAE, directional accuracy (bars with a move and a non-zero forecast) and the Pearson IC."""
    pred = np.asarray(predicted, dtype=np.float64)
    true = np.asarray(realized, dtype=np.float64)
    if pred.shape != true.shape or pred.size == 0:
        raise ValueError("predicted and realized must be non-empty and of one length")
    called = (true != 0) & (pred != 0)
    hits = np.sign(pred[called]) == np.sign(true[called])
    ic = float(np.corrcoef(pred, true)[0, 1]) if pred.std() > 0 and true.std() > 0 else 0.0
    return ForecastMetrics(
        mse=float(np.mean((pred - true) ** 2)),
        mae=float(np.mean(np.abs(pred - true))),
        directional_accuracy=float(hits.mean()) if hits.size else 0.0,
        information_coefficient=ic,
        samples=int(pred.size),
    )


def block_bootstrap_ci(
    series: Sequence[FloatArray],
    statistic: Callable[..., float],
    *,
    block: int,
    samples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of `statistic(*series)` under the moving-block bootstrap.

    Several series are resampled with the SAME blocks (paired), so a difference between two strategies
    keeps their dependence on the same market. Blocks keep the autocorrelation a plain bootstrap destroys."""
    arrays = [np.asarray(s, dtype=np.float64) for s in series]
    n = arrays[0].size
    if any(a.size != n for a in arrays):
        raise ValueError("paired series must have one length")
    if n < 2 or not 1 <= block <= n:
        raise ValueError(f"need 1 <= block <= n (block={block}, n={n})")
    rng = np.random.default_rng(seed)
    starts_per_sample = math.ceil(n / block)
    offsets = np.arange(block)
    values = np.empty(samples)
    for i in range(samples):
        starts = rng.integers(0, n - block + 1, size=starts_per_sample)
        index = (starts[:, None] + offsets).ravel()[:n]
        values[i] = statistic(*(a[index] for a in arrays))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
