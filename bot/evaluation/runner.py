"""`paperbot evaluate`: walk-forward out-of-sample forecasts, traded by the daemon's own engine, risk and
costs, beside baselines traded the same way, with bootstrap confidence intervals.

Each forecaster gets a book of its own in one SQLite file, so every number in the report can be recomputed
from that file: equity from the per-bar snapshots, turnover and costs from the fills."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from bot.bars import Bar
from bot.brokers import BrokerContext
from bot.config import AppConfig, StrategyConfig
from bot.daemon import make_runtime
from bot.engine import Engine, EngineConfig
from bot.errors import ConfigError
from bot.evaluation.baselines import (
    ConstantForecaster,
    Fold,
    LinearForecaster,
    MovingAverageCrossover,
    WalkForwardForecaster,
)
from bot.evaluation.metrics import (
    FloatArray,
    block_bootstrap_ci,
    forecast_metrics,
    performance_metrics,
    periods_per_year,
    sharpe_ratio,
)
from bot.journal import Journal
from bot.model.forecaster import Forecaster, model_forecaster
from bot.model.registry import LoadedModel
from bot.model.train_command import strategy_bars
from bot.model.training import build_samples, train_model
from bot.orders import to_decimal
from bot.store import models as m
from bot.store.db import make_engine, session_factory, upgrade

Progress = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class EvaluationSettings:
    """How the walk-forward is cut and how the baselines are set."""

    folds: int = 4
    ma_fast: int = 20
    ma_slow: int = 100
    ridge_alpha: float = 1.0
    bootstrap_samples: int = 2000
    seed: int = 0


@dataclass(frozen=True)
class BookResult:
    """One forecaster's record, read back from its book."""

    times: list[datetime]
    equity: FloatArray
    metrics: dict[str, float]


@dataclass(frozen=True)
class Evaluation:
    """The report object (`evaluate --format json`) and each book's equity curve (for the plot)."""

    report: dict[str, Any]
    curves: dict[str, tuple[list[datetime], FloatArray]]


def _fold_starts(start: datetime, end: datetime, folds: int) -> list[datetime]:
    return [start + (end - start) * k / folds for k in range(folds)]


def _training_history(
    bars: Mapping[str, list[Bar]], strategy: StrategyConfig, fold_start: datetime
) -> dict[str, list[Bar]]:
    """The bars a fold may learn from: every label ends before the fold starts (samples need their whole
    horizon inside the history), minus the embargo; the last rolling_days of that for a rolling window."""
    end = fold_start - strategy.embargo
    training = strategy.training
    begin = end - timedelta(days=training.rolling_days) if training.walk_forward == "rolling" else None
    return {
        symbol: [b for b in series if b.ts < end and (begin is None or b.ts >= begin)]
        for symbol, series in bars.items()
    }


def _fit_folds(
    bars: Mapping[str, list[Bar]],
    strategy: StrategyConfig,
    starts: Sequence[datetime],
    settings: EvaluationSettings,
    progress: Progress,
) -> tuple[list[Fold], list[Fold], float]:
    """Per fold, an LSTM and a ridge model fitted only on bars before the fold starts."""
    lstm_folds, linear_folds = [], []
    target_scale = 1.0
    cpu = torch.device("cpu")
    # The walk-forward is the out-of-sample test here: no cross-validation inside each fold's training.
    fit_only = strategy.model_copy(update={"training": strategy.training.model_copy(update={"cv_folds": 0})})
    for k, fold_start in enumerate(starts, start=1):
        history = _training_history(bars, strategy, fold_start)
        progress(
            "fold",
            {"fold": k, "train_until": fold_start.isoformat(), "bars": sum(len(b) for b in history.values())},
        )
        result = train_model(history, fit_only, version=f"wf{k}")
        loaded = LoadedModel(result.card, result.network, Path())
        lstm_folds.append(
            Fold(fold_start, model_forecaster(loaded, strategy.symbols, cpu, strategy.model.inference))
        )
        samples = build_samples(history, strategy)
        linear = LinearForecaster.fit(samples.rows[samples.ends], samples.targets[:, 0], settings.ridge_alpha)
        linear_folds.append(Fold(fold_start, linear))
        target_scale = result.card.target_scale
    return lstm_folds, linear_folds, target_scale


async def _trade(
    config: AppConfig,
    strategy: StrategyConfig,
    forecaster: Forecaster,
    *,
    target_scale: float,
    sessions: sessionmaker[Session],
    book: str,
    start: datetime,
    end: datetime | None,
) -> int:
    """Replay [start, end) through the engine with this forecaster, into its own book."""
    starting_cash = config.broker.initial_cash()
    if starting_cash is None:
        raise ConfigError("broker.kind", 'evaluate trades in the simulated broker: set [broker] kind = "sim"')
    journal = Journal(sessions, Journal.open_book(sessions, book, m.BookKind.BACKTEST.value, starting_cash))
    journal.start_run("evaluate", "")
    one = config.model_copy(update={"strategies": [strategy]})
    feed = one.feed.build(one.feed_context(backtest=True, start=start, end=end))
    broker = one.broker.build(BrokerContext(strategy.symbols, backtest=True))
    engine = Engine(
        feed,
        broker,
        journal,
        [make_runtime(strategy, forecaster, target_scale)],
        book=book,
        starting_cash=starting_cash,
        config=EngineConfig(guard=config.guard),
    )
    await engine.warm_up({}, start)
    stats = await engine.run()
    journal.finish_run(m.RunStatus.COMPLETED, stats.bars)
    return journal.book_id


def _realized(bars: Mapping[str, list[Bar]]) -> dict[tuple[str, datetime], float]:
    """What each bar's prediction was about: the next bar's open-to-close log return."""
    out = {}
    for symbol, series in bars.items():
        for bar, nxt in itertools.pairwise(series):
            out[(symbol, bar.ts)] = math.log(nxt.close / nxt.open)
    return out


def _read_book(
    sessions: sessionmaker[Session],
    book_id: int,
    opens: Mapping[tuple[str, datetime], float],
    realized: Mapping[tuple[str, datetime], float],
) -> BookResult:
    with sessions() as session:
        snaps = session.execute(
            select(m.EquitySnapshot.ts, m.EquitySnapshot.equity)
            .where(m.EquitySnapshot.book_id == book_id, m.EquitySnapshot.kind == m.SnapshotKind.BAR.value)
            .order_by(m.EquitySnapshot.ts)
        ).all()
        fills = session.scalars(select(m.Fill).where(m.Fill.book_id == book_id)).all()
        preds = session.execute(
            select(m.Prediction.symbol, m.Prediction.bar_ts, m.Prediction.predicted_return).where(
                m.Prediction.book_id == book_id, m.Prediction.horizon == 1
            )
        ).all()
    notional = sum((f.qty * f.price for f in fills), Decimal(0))
    # A market order fills at its bar's open, moved against it: the slippage is the distance from the open.
    slipped = sum((f.qty * abs(f.price - to_decimal(opens[(f.symbol, f.ts)])) for f in fills), Decimal(0))
    costs = sum((f.commission for f in fills), Decimal(0)) + slipped
    times = [t for t, _ in snaps]
    equity = np.array([float(e) for _, e in snaps])
    perf = performance_metrics(times, equity, traded_notional=float(notional), costs=float(costs))
    pairs = [(p, realized[(s, t)]) for s, t, p in preds if (s, t) in realized]
    forecast = forecast_metrics([p for p, _ in pairs], [r for _, r in pairs]) if pairs else None
    metrics = perf.as_dict() | ({} if forecast is None else forecast.as_dict()) | {"fills": float(len(fills))}
    metrics.setdefault("directional_accuracy", 0.0)
    return BookResult(times, equity, metrics)


async def evaluate(
    config: AppConfig,
    strategy: StrategyConfig,
    database: Path,
    *,
    start: datetime,
    end: datetime | None,
    settings: EvaluationSettings,
    progress: Progress,
) -> Evaluation:
    """Run the walk-forward model and every baseline over [start, end)."""
    bars = strategy_bars(config, strategy, None)
    last = max(series[-1].ts for series in bars.values() if series)
    stop = min(end, last) if end else last
    lstm_folds, linear_folds, target_scale = _fit_folds(
        bars, strategy, _fold_starts(start, stop, settings.folds), settings, progress
    )
    signal = strategy.full_signal_return
    forecasters: dict[str, Forecaster] = {
        "model": WalkForwardForecaster("walk_forward_lstm", lstm_folds),
        "buy_and_hold": ConstantForecaster("buy_and_hold", signal),
        "ma_crossover": MovingAverageCrossover(settings.ma_fast, settings.ma_slow, signal),
        "flat": ConstantForecaster("flat", 0.0),
        "linear": WalkForwardForecaster("walk_forward_linear", linear_folds),
    }
    url = f"sqlite:///{database}"
    upgrade(url)
    db = make_engine(url)
    try:
        sessions = session_factory(db)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        realized = _realized(bars)
        opens = {(b.symbol, b.ts): b.open for series in bars.values() for b in series}
        results: dict[str, BookResult] = {}
        for name, forecaster in forecasters.items():
            progress("trading", {"forecaster": name})
            book = await _trade(
                config,
                strategy,
                forecaster,
                target_scale=target_scale,
                sessions=sessions,
                book=f"eval-{strategy.name}-{stamp}-{name}",
                start=start,
                end=end,
            )
            results[name] = _read_book(sessions, book, opens, realized)
    finally:
        db.dispose()
    report = _report(results, strategy, start=start, stop=stop, settings=settings, database=database)
    return Evaluation(report, {name: (r.times, r.equity) for name, r in results.items()})


def _returns(result: BookResult) -> FloatArray:
    return np.asarray(result.equity[1:] / result.equity[:-1] - 1.0, dtype=np.float64)


def _report(
    results: Mapping[str, BookResult],
    strategy: StrategyConfig,
    *,
    start: datetime,
    stop: datetime,
    settings: EvaluationSettings,
    database: Path,
) -> dict[str, Any]:
    model = results["model"]
    if any(r.times != model.times for r in results.values()):
        raise RuntimeError("books disagree on bar times: the runs did not see the same bars")
    per_year = periods_per_year(model.times)
    # About a week of bars keeps volatility clusters together; at most a twentieth of a short record, so
    # a resample still mixes enough blocks to mean something.
    block = max(2, min(round(per_year / 52), len(model.times) // 20))

    def sharpe(r: FloatArray) -> float:
        return sharpe_ratio(r, per_year)

    def diff(a: FloatArray, b: FloatArray) -> float:
        return sharpe(a) - sharpe(b)

    ci = {"block": block, "samples": settings.bootstrap_samples, "seed": settings.seed}
    model_returns = _returns(model)
    return {
        "strategy": strategy.name,
        "span": {"start": start.isoformat(), "end": stop.isoformat(), "bars": len(model.times)},
        "folds": settings.folds,
        "database": str(database),
        "model": model.metrics,
        "baselines": {name: r.metrics for name, r in results.items() if name != "model"},
        "sharpe_ci": list(
            block_bootstrap_ci(
                [model_returns], sharpe, block=block, samples=settings.bootstrap_samples, seed=settings.seed
            )
        ),
        "sharpe_diff_ci": {
            name: list(
                block_bootstrap_ci(
                    [model_returns, _returns(r)],
                    diff,
                    block=block,
                    samples=settings.bootstrap_samples,
                    seed=settings.seed,
                )
            )
            for name, r in results.items()
            if name != "model"
        },
        "bootstrap": ci,
    }
