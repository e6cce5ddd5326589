"""Assembly and lifecycle: build the stages from config, restore the book, run, stop cleanly on signals."""

from __future__ import annotations

import asyncio
import hashlib
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import torch

from bot.brokers import SimBroker
from bot.config import AppConfig, StrategyConfig
from bot.drift import DriftMonitor
from bot.engine import Engine, EngineStats, StrategyRuntime
from bot.errors import ConfigError, ModelError
from bot.features import FeatureEngine
from bot.feeds import ReplayFeed
from bot.journal import BookState, Journal
from bot.logs import get_logger
from bot.model import (
    LoadedModel,
    catalog,
    check_compatible,
    latest_version,
    load_model,
    resolve_device,
)
from bot.model.forecaster import Forecaster, model_forecaster
from bot.orders import OrderStatus
from bot.reports import BookStatus, book_status
from bot.risk import RiskEngine, Sizer, TradingStateTracker
from bot.scheduler import SchedulerConfig, build_scheduler
from bot.store import models as m
from bot.store.db import ensure_schema, make_engine, session_factory
from bot.strategy import ForecastStrategy
from bot.systemd import notify, watchdog_interval


@dataclass(frozen=True)
class RunOutcome:
    """What `run`/`backtest` report when they return."""

    stats: EngineStats
    status: BookStatus


def config_digest(path: Path) -> str:
    """sha256 of the config file, stored with each run."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def load_strategy_model(index: int, strategy: StrategyConfig) -> LoadedModel:
    """The newest model version of a strategy, checked against its config; errors name the key."""
    try:
        loaded = load_model(latest_version(strategy.model_dir))
        check_compatible(loaded.card, strategy)
    except ModelError as exc:
        raise ConfigError(f"strategies[{index}].model_dir", str(exc)) from exc
    if loaded.card.bidirectional:  # it reads its window backwards too: kept for offline analysis
        raise ConfigError(
            f"strategies[{index}].model.bidirectional",
            "a bidirectional model is for offline analysis (train, evaluate); it never trades",
        )
    return loaded


def make_runtime(
    strategy: StrategyConfig, forecaster: Forecaster, target_scale: float, model_version_id: int | None = None
) -> StrategyRuntime:
    """Assemble one strategy's stages around a forecaster (the model, or an evaluation baseline)."""
    return StrategyRuntime(
        config=strategy,
        features=FeatureEngine(strategy.features, strategy.model.window, strategy.symbols),
        forecaster=forecaster,
        strategy=ForecastStrategy(strategy),
        risk=RiskEngine(strategy.risk),
        tracker=TradingStateTracker(strategy.name, strategy.risk),
        drift=DriftMonitor(strategy.name, target_scale),
        sizer=Sizer(strategy.sizing, strategy.risk, strategy.bar_interval),
        model_version_id=model_version_id,
    )


async def run_daemon(
    config: AppConfig,
    *,
    command: str,
    config_path: Path,
    start: datetime | None = None,
    end: datetime | None = None,
    install_signals: bool = True,
    stop_after_batches: int | None = None,
) -> RunOutcome:
    """`run` (the configured book, paced, resumable) or `backtest` (a new book, as fast as possible).

    Everything that can refuse the start (models, device) is checked before the database is touched."""
    torch.set_num_threads(config.daemon.torch_threads)
    device = resolve_device(config.daemon.device)
    models = [load_strategy_model(i, s) for i, s in enumerate(config.strategies)]
    ensure_schema(config.daemon.database_url)
    db = make_engine(config.daemon.database_url)
    try:
        backtest = command == "backtest"
        sessions = session_factory(db)
        book_name = f"backtest-{datetime.now(UTC):%Y%m%dT%H%M%S%f}" if backtest else config.daemon.book
        kind = m.BookKind.BACKTEST if backtest else m.BookKind.DAEMON
        journal = Journal(
            sessions, Journal.open_book(sessions, book_name, kind.value, config.broker.starting_cash)
        )
        runtimes = [
            make_runtime(
                s,
                model_forecaster(loaded, s.symbols, device, s.model.inference),
                loaded.card.target_scale,
                catalog.register(sessions, loaded.card, loaded.path),
            )
            for s, loaded in zip(config.strategies, models, strict=True)
        ]
        if not backtest:  # the daemon trades this version now
            for loaded in models:
                catalog.activate(sessions, loaded.card.name, loaded.card.version)
        journal.start_run(command, config_digest(config_path))
        start = start or config.feed.start
        feed = ReplayFeed(
            config.feed.data_dir,
            {s: rt.config.bar_interval for rt in runtimes for s in rt.config.symbols},
            speed=0.0 if backtest else config.feed.speed,
            start=start,
            end=end or config.feed.end,
        )
        broker = SimBroker(config.broker)
        state = journal.load_state()
        broker.restore(state.fills, [i for i, s in state.open_orders if s is not OrderStatus.NEW])
        engine = Engine(
            feed,
            broker,
            journal,
            runtimes,
            book=book_name,
            starting_cash=state.starting_cash,
            on_batch=_stop_after(stop_after_batches) if stop_after_batches else None,
        )
        engine.restore(state)
        await engine.warm_up(_warmup_points(state, feed, start))
        await engine.reconcile(state)
        stats = await _serve(engine, journal, config, book_name, live=not backtest, signals=install_signals)
        await feed.close()
        await broker.close()
        return RunOutcome(stats, book_status(sessions, journal.book_id))
    finally:
        db.dispose()


async def _serve(
    engine: Engine, journal: Journal, config: AppConfig, book: str, *, live: bool, signals: bool
) -> EngineStats:
    """Run the engine with the scheduler and signal handlers around it; record how the run ended."""
    log = get_logger("paperbot.daemon")

    async def snapshot() -> None:
        if all(s in engine.marks for s in engine.ledger.positions()):
            journal.record_equity(engine.equity_point(datetime.now(UTC)), m.SnapshotKind.PERIODIC)

    async def ping() -> None:
        notify("WATCHDOG=1")

    scheduler = build_scheduler(
        SchedulerConfig(config.daemon.equity_snapshot_seconds, watchdog_interval()), snapshot, ping
    )
    loop = asyncio.get_running_loop()
    if signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, engine.stop)
    if live:  # wall-clock snapshots mean nothing in a backtest that runs as fast as it can
        scheduler.start()
    notify("READY=1")
    log.info("started", book=book, strategies=list(engine.trading_states), live=live)
    status, message = m.RunStatus.FAILED, None
    try:
        stats = await engine.run()
        status = m.RunStatus.STOPPED if stats.stopped else m.RunStatus.COMPLETED
        return stats
    except BaseException as exc:
        message = repr(exc)
        raise
    finally:
        notify("STOPPING=1")
        if scheduler.running:
            scheduler.shutdown(wait=False)
        if signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        journal.finish_run(status, engine.stats.bars, message)
        log.info("stopped", status=status.value, bars=engine.stats.bars, fills=engine.stats.fills)


def _warmup_points(state: BookState, feed: ReplayFeed, start: datetime | None) -> dict[str, datetime]:
    """Where each symbol's history ends: after its last handled bar, else at the replay start."""
    points: dict[str, datetime] = {}
    for symbol in feed.symbols:
        if symbol in state.last_bars:
            points[symbol] = state.last_bars[symbol][0] + timedelta(microseconds=1)
        elif start is not None:
            points[symbol] = start
    return points


def _stop_after(batches: int) -> Callable[[Engine], None]:
    def check(engine: Engine) -> None:
        if engine.stats.batches >= batches:
            engine.stop()

    return check
