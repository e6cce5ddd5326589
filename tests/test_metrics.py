"""Evaluation metrics against hand-computed values."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from bot.evaluation import (
    block_bootstrap_ci,
    forecast_metrics,
    performance_metrics,
    periods_per_year,
    sharpe_ratio,
)
from bot.evaluation.metrics import max_drawdown, sortino_ratio

T0 = datetime(2020, 1, 1, tzinfo=UTC)
YEAR = timedelta(days=365.25)


def test_periods_per_year_counts_what_the_data_has() -> None:
    daily = [T0 + YEAR * i / 252 for i in range(253)]
    assert periods_per_year(daily) == pytest.approx(252)
    with pytest.raises(ValueError, match="two timestamps"):
        periods_per_year([T0])


def test_drawdown_sharpe_sortino_by_hand() -> None:
    assert max_drawdown(np.array([100.0, 120.0, 90.0, 130.0, 65.0])) == pytest.approx(0.5)
    r = np.array([0.01, -0.02, 0.03, 0.0])
    mean, std = 0.005, math.sqrt(((0.005**2) + (0.025**2) + (0.025**2) + (0.005**2)) / 3)
    assert sharpe_ratio(r, 252) == pytest.approx(mean / std * math.sqrt(252))
    downside = math.sqrt(0.02**2 / 4)
    assert sortino_ratio(r, 252) == pytest.approx(mean / downside * math.sqrt(252))
    assert sharpe_ratio(np.zeros(5), 252) == 0.0
    assert sortino_ratio(np.array([0.01, 0.02]), 252) == 0.0


def test_performance_of_a_curve_that_doubles_in_two_years() -> None:
    times = [T0, T0 + YEAR, T0 + 2 * YEAR]
    metrics = performance_metrics(times, [100.0, 80.0, 200.0], traded_notional=600.0, costs=2.0)
    assert metrics.total_return == pytest.approx(1.0)
    assert metrics.annual_return == pytest.approx(math.sqrt(2) - 1)
    assert metrics.max_drawdown == pytest.approx(0.2)
    assert metrics.calmar == pytest.approx((math.sqrt(2) - 1) / 0.2)
    assert metrics.turnover == pytest.approx(600 / 2 / (380 / 3))
    assert metrics.costs == pytest.approx(0.02)
    assert metrics.bars == 3
    assert set(metrics.as_dict()) >= {"sharpe", "sortino", "max_drawdown", "calmar", "annual_return"}
    with pytest.raises(ValueError, match="positive"):
        performance_metrics(times, [100.0, 0.0, 50.0])


def test_forecast_metrics_by_hand() -> None:
    m = forecast_metrics([0.01, -0.02, 0.0, 0.03], [0.02, 0.01, -0.01, 0.0])
    assert m.mse == pytest.approx((0.01**2 + 0.03**2 + 0.01**2 + 0.03**2) / 4)
    assert m.mae == pytest.approx(0.02)
    assert m.directional_accuracy == 0.5  # two called bars with a move: one right, one wrong
    assert m.information_coefficient == pytest.approx(
        np.corrcoef([0.01, -0.02, 0.0, 0.03], [0.02, 0.01, -0.01, 0.0])[0, 1]
    )


def test_block_bootstrap() -> None:
    rng = np.random.default_rng(1)
    r = rng.normal(0.001, 0.01, 2000)
    low, high = block_bootstrap_ci([r], lambda x: float(x.mean()), block=20, samples=500, seed=3)
    assert low < r.mean() < high
    assert (low, high) == block_bootstrap_ci([r], lambda x: float(x.mean()), block=20, samples=500, seed=3)
    # Paired: the difference of a series with itself is exactly zero in every resample.
    assert block_bootstrap_ci([r, r], lambda a, b: float(a.mean() - b.mean()), block=20, samples=200) == (
        0,
        0,
    )
    # One block as long as the series resamples nothing.
    whole = block_bootstrap_ci([r], lambda x: float(x.mean()), block=r.size, samples=50)
    assert whole == pytest.approx((r.mean(), r.mean()))
    # A shifted copy: the paired interval of the difference is the shift, the unpaired spread is not.
    low, high = block_bootstrap_ci(
        [r + 0.002, r], lambda a, b: float(a.mean() - b.mean()), block=20, samples=200
    )
    assert low == pytest.approx(0.002) and high == pytest.approx(0.002)
    with pytest.raises(ValueError, match="one length"):
        block_bootstrap_ci([r, r[:10]], lambda a, b: 0.0, block=5)
