"""`paperbot train`: pick the span, load the bars, fit, and write a new version under model_dir."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from bot.bars import Bar, BarGuard
from bot.config import AppConfig, StrategyConfig
from bot.model import catalog
from bot.model.registry import next_version, save_model
from bot.model.training import train_model
from bot.store.db import ensure_schema, make_engine, session_factory


def strategy_bars(config: AppConfig, strategy: StrategyConfig, end: datetime | None) -> dict[str, list[Bar]]:
    """The strategy's bars from [strategies.training] start to `end`, through the guard the daemon uses."""
    start = strategy.training.start
    result: dict[str, list[Bar]] = {}
    for symbol in strategy.symbols:
        bars, _ = config.feed.stored_bars(symbol, strategy.bar_interval)
        guard = BarGuard()
        result[symbol] = [
            b
            for b in bars
            if (start is None or b.ts >= start) and (end is None or b.ts < end) and guard.check(b) is None
        ]
    return result


def training_bars(config: AppConfig, strategy_name: str | None) -> dict[str, list[Bar]]:
    """The training span: it ends where the replay starts unless [strategies.training] end says otherwise,
    so that the default `run` trades only on bars the model never saw."""
    strategy = config.strategy(strategy_name)
    return strategy_bars(config, strategy, strategy.training.end or config.feed.span()[0])


def train_strategy(config: AppConfig, strategy_name: str | None, log: Any) -> Path:
    """Train and save; returns the new version folder."""
    strategy = config.strategy(strategy_name)
    ensure_schema(config.daemon.database_url)  # before the long part: the new version gets a row
    bars = training_bars(config, strategy_name)
    log.info(
        "training",
        strategy=strategy.name,
        symbols={s: len(b) for s, b in bars.items()},
        start=min(b[0].ts for b in bars.values() if b).isoformat(),
        end=max(b[-1].ts for b in bars.values() if b).isoformat(),
    )
    version = next_version(strategy.model_dir)
    result = train_model(bars, strategy, version=version, progress=lambda p: log.info("epoch", **p))
    folder = save_model(strategy.model_dir, result.network, result.card)
    db = make_engine(config.daemon.database_url)
    try:
        catalog.register(session_factory(db), result.card, folder)
    finally:
        db.dispose()
    log.info(
        "trained",
        strategy=strategy.name,
        version=version,
        path=str(folder),
        metrics=result.card.metrics,
        baselines=result.card.baselines,
    )
    return folder
