"""`paperbot evaluate`: baselines as forecasters, walk-forward delegation, the whole command on real bars."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import cli_json, write_crypto_project
from sqlalchemy import select

from bot.bars import Bar
from bot.cli import main
from bot.evaluation.baselines import (
    ConstantForecaster,
    Fold,
    LinearForecaster,
    MovingAverageCrossover,
    WalkForwardForecaster,
)
from bot.evaluation.metrics import performance_metrics
from bot.model.card import ModelCard
from bot.store import models as m
from bot.store.db import make_engine, session_factory

T0 = datetime(2024, 1, 2, 14, tzinfo=UTC)
METRICS = {
    "sharpe",
    "sortino",
    "max_drawdown",
    "calmar",
    "annual_return",
    "directional_accuracy",
    "turnover",
    "costs",
}


def bar(symbol: str, i: int, close: float) -> Bar:
    return Bar(symbol, T0 + timedelta(hours=i), close, close, close, close, 1.0)


def test_moving_average_crossover_is_long_only_when_fast_is_above_slow() -> None:
    ma = MovingAverageCrossover(2, 4, 0.01)
    closes = [10.0, 10.0, 10.0, 10.0, 12.0, 13.0, 9.0, 8.0]
    signals = []
    for i, close in enumerate(closes):
        ma.observe(bar("A", i, close))
        signals.append(float(ma.predict([bar("A", i, close)], np.zeros((1, 1, 1)))[0, 0]))
    # No slow average yet, then equal averages (not above), rising above, equal again (11 = 11), below.
    assert signals == [0.0, 0.0, 0.0, 0.0, 0.01, 0.01, 0.0, 0.0]
    with pytest.raises(ValueError, match="fast < slow"):
        MovingAverageCrossover(5, 5, 0.01)


def test_linear_forecaster_recovers_a_linear_relation() -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(2000, 3))
    targets = 0.002 * rows[:, 0] - 0.001 * rows[:, 2] + 0.0005
    model = LinearForecaster.fit(rows, targets, alpha=1e-9)
    windows = rows[:5, None, :].repeat(4, axis=1)
    assert np.allclose(model.predict([bar("A", 0, 1.0)] * 5, windows)[:, 0], targets[:5], atol=1e-9)
    shrunk = LinearForecaster.fit(rows, targets, alpha=10.0)
    assert np.abs(shrunk.predict([bar("A", 0, 1.0)] * 5, windows) - 0.0005).max() < 1e-3


def test_walk_forward_uses_the_fold_fitted_before_each_bar() -> None:
    folds = [
        Fold(T0, ConstantForecaster("a", 1.0)),
        Fold(T0 + timedelta(hours=10), ConstantForecaster("b", 2.0)),
    ]
    wf = WalkForwardForecaster("wf", list(reversed(folds)))
    window = np.zeros((1, 1, 1))
    assert wf.predict([bar("A", 0, 1.0)], window)[0, 0] == 1.0
    assert wf.predict([bar("A", 9, 1.0)], window)[0, 0] == 1.0
    assert wf.predict([bar("A", 10, 1.0)], window)[0, 0] == 2.0


def test_evaluate_on_held_out_bars(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Train on bars before 2018-01-25, evaluate on the rest: the table's numbers come back from the books."""
    model_dir = tmp_path / "models" / "lstm-crypto"
    config = write_crypto_project(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", model_dir)
    assert main(["-c", str(config), "train"]) == 0
    capsys.readouterr()
    report: Any = cli_json(capsys, config, "evaluate", "--folds", "2")

    assert set(report["model"]) >= METRICS
    assert set(report["baselines"]) == {"buy_and_hold", "ma_crossover", "flat", "linear"}
    for metrics in report["baselines"].values():
        assert set(metrics) >= METRICS
    low, high = report["sharpe_ci"]
    assert low < high
    assert set(report["sharpe_diff_ci"]) == set(report["baselines"])
    flat = report["baselines"]["flat"]
    assert (flat["sharpe"], flat["turnover"], flat["costs"], flat["fills"]) == (0, 0, 0, 0)
    assert report["model"]["fills"] > 0
    assert report["span"]["start"].startswith("2018-01-25")

    # Every number can be recomputed from the evaluation database.
    engine = make_engine(f"sqlite:///{config.parent / report['database']}")
    try:
        with session_factory(engine)() as session:
            book = session.scalars(select(m.Book).where(m.Book.name.endswith("-model"))).one()
            rows = session.execute(
                select(m.EquitySnapshot.ts, m.EquitySnapshot.equity)
                .where(m.EquitySnapshot.book_id == book.id, m.EquitySnapshot.kind == "bar")
                .order_by(m.EquitySnapshot.ts)
            ).all()
            fills = session.scalars(select(m.Fill).where(m.Fill.book_id == book.id)).all()
        again = performance_metrics(
            [t for t, _ in rows],
            [float(e) for _, e in rows],
            traded_notional=float(sum(f.qty * f.price for f in fills)),
        )
        model = {k: float(v) for k, v in report["model"].items()}
        assert again.sharpe == pytest.approx(model["sharpe"], rel=1e-12)
        assert again.max_drawdown == pytest.approx(model["max_drawdown"], rel=1e-12)
        assert again.turnover == pytest.approx(model["turnover"], rel=1e-12)
        assert len(fills) == report["model"]["fills"]
    finally:
        engine.dispose()

    card = ModelCard.read(model_dir / "0001")
    assert card.evaluation["model"]["sharpe"] == pytest.approx(float(report["model"]["sharpe"]))
    page = (model_dir / "0001" / "evaluation.html").read_text()
    assert page.count("<polyline") == 5
    assert "walk-forward" in page


def test_evaluate_needs_a_held_out_span(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = Path(__file__).parent.parent / "models" / "lstm-equities"
    shutil.copytree(source, tmp_path / "models" / "lstm-equities")
    config = tmp_path / "config.toml"
    text = (Path(__file__).parent.parent / "config.toml").read_text()
    config.write_text(
        text.replace('start = "2016-01-01T00:00:00Z"', "").replace(
            '"data/equities-1h"', f'"{Path(__file__).parent.parent / "data" / "equities-1h"}"'
        )
    )
    assert main(["-c", str(config), "evaluate"]) == 2
    assert "config error at feed.start" in capsys.readouterr().err
