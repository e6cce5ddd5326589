"""Assembly and lifecycle: build the stages from config, restore the book, run, stop cleanly on signals."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import torch
from sqlalchemy.exc import SQLAlchemyError

from bot.brokers import Broker, BrokerContext
from bot.config import AppConfig, StrategyConfig
from bot.drift import DriftMonitor
from bot.engine import Engine, EngineConfig, EngineStats, StrategyRuntime
from bot.errors import ConfigError, DatabaseFaultError, ModelError
from bot.features import FeatureEngine
from bot.journal import Journal
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
from bot.reports import BookStatus, book_status
from bot.risk import RiskEngine, Sizer, TradingStateTracker
from bot.scheduler import SchedulerConfig, build_scheduler
from bot.store import models as m
from bot.store.db import ensure_schema, make_engine, session_factory
from bot.store.retry import DatabaseRetry, RetryPolicy
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
    on_batch: Callable[[Engine], None] | None = None,
    broker: Broker | None = None,
) -> RunOutcome:
    """`run` (the configured book, paced, resumable) or `backtest` (a new book, as fast as possible).

    Everything that can refuse the start (models, device, the feed's files, the venue's keys and URLs)
    is checked before the database is touched. SIGINT and SIGTERM are handled from the first moment: one
    that comes during the start lets it finish without trading, and the run is recorded as stopped.
    `on_batch` is called after every batch, and `broker` replaces the configured one: both are for tests
    that script a venue."""
    stop = _StopRequest()
    loop = asyncio.get_running_loop()
    if install_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
    try:
        return await _start_and_serve(
            config,
            command=command,
            config_path=config_path,
            start=start,
            end=end,
            stop=stop,
            on_batch=_after_batch(on_batch, stop_after_batches),
            broker=broker,
        )
    finally:
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


class _StopRequest:
    """What SIGINT and SIGTERM do: stop the engine, or, before there is one, make it stop at once. `event`
    cuts short the database retries of the start (see `DatabaseRetry`)."""

    def __init__(self) -> None:
        self.requested = False
        self.event = asyncio.Event()
        self._engine: Engine | None = None

    def __call__(self) -> None:
        self.requested = True
        self.event.set()
        if self._engine is not None:
            self._engine.stop()

    def watch(self, engine: Engine) -> None:
        """The engine to stop from now on (stopped now if a signal came first)."""
        self._engine = engine
        if self.requested:
            engine.stop()


async def _start_and_serve(
    config: AppConfig,
    *,
    command: str,
    config_path: Path,
    start: datetime | None,
    end: datetime | None,
    stop: _StopRequest,
    on_batch: Callable[[Engine], None] | None,
    broker: Broker | None,
) -> RunOutcome:
    torch.set_num_threads(config.daemon.torch_threads)
    device = resolve_device(config.daemon.device)
    models = [load_strategy_model(i, s) for i, s in enumerate(config.strategies)]
    backtest = command == "backtest"
    span_start, span_end = config.feed.span()
    start, end = start or span_start, end or span_end
    feed = config.feed.build(config.feed_context(backtest=backtest, start=start, end=end))
    broker = broker or config.broker.build(BrokerContext(config.all_symbols, backtest=backtest))
    db = None
    try:
        await broker.start()  # a venue that refuses the keys stops the start here, before the database
        await feed.start()
        url = config.daemon.database_url
        db = make_engine(url, config.daemon.database_busy_timeout_seconds)
        sessions = session_factory(db)
        # Every database call from here on is redone after a temporary fault (each is one transaction).
        database = DatabaseRetry(url, RetryPolicy(config.daemon.database_retry_seconds), sessions)
        await database.call("ensure_schema", lambda: ensure_schema(url), stop.event)
        book_name = f"backtest-{datetime.now(UTC):%Y%m%dT%H%M%S%f}" if backtest else config.daemon.book
        kind = m.BookKind.BACKTEST if backtest else m.BookKind.DAEMON
        cash = config.broker.initial_cash()
        if cash is None:  # a venue's paper account: a new book starts with the cash it holds now
            cash = (await broker.account()).cash
        book_id = await database.call(
            "open_book", partial(Journal.open_book, sessions, book_name, kind.value, cash), stop.event
        )
        journal = Journal(sessions, book_id)
        runtimes = [
            make_runtime(
                s,
                model_forecaster(loaded, s.symbols, device, s.model.inference),
                loaded.card.target_scale,
                await database.call(
                    "register_model",
                    partial(catalog.register, sessions, loaded.card, loaded.path),
                    stop.event,
                ),
            )
            for s, loaded in zip(config.strategies, models, strict=True)
        ]
        if not backtest:  # the daemon trades this version now
            for loaded in models:
                activate = partial(catalog.activate, sessions, loaded.card.name, loaded.card.version)
                await database.call("activate_model", activate, stop.event)
        digest = config_digest(config_path)
        await database.write_once("start_run", lambda: journal.start_run(command, digest), stop.event)
        state = await database.call("load_state", journal.load_state, stop.event)
        broker.restore(state.fills, state.open_orders, state.splits)
        engine = Engine(
            feed,
            broker,
            journal,
            runtimes,
            book=book_name,
            starting_cash=state.starting_cash,
            config=EngineConfig(
                batch_linger_seconds=config.daemon.batch_linger_seconds,
                reconciliation=config.reconciliation,
                guard=config.guard,
            ),
            on_batch=on_batch,
            database=database,
        )
        engine.restore(state)
        stop.watch(engine)
        stats = await _serve(
            engine,
            journal,
            database,
            config,
            book_name,
            start=start,
            last_bars={s: ts for s, (ts, _) in state.last_bars.items()},
            live=not backtest,
            stop=stop.event,
        )
        status = await database.call("book_status", partial(book_status, sessions, journal.book_id))
        return RunOutcome(stats, status)
    finally:
        await feed.close()
        await broker.close()
        if db is not None:
            db.dispose()


async def _serve(
    engine: Engine,
    journal: Journal,
    database: DatabaseRetry,
    config: AppConfig,
    book: str,
    *,
    start: datetime | None,
    last_bars: dict[str, datetime],
    live: bool,
    stop: asyncio.Event,
) -> EngineStats:
    """Reconcile, warm up and run the engine, with the scheduler around it; record how the run ended.
    Nothing is traded before the start-up reconciliation has finished."""
    log = get_logger("paperbot.daemon")

    async def snapshot() -> None:
        # Not while a batch waits for the database: its fills are in the ledger, not yet in the journal.
        if not database.waiting and all(s in engine.marks for s in engine.ledger.positions()):
            journal.record_equity(engine.equity_point(engine.market_now()), m.SnapshotKind.PERIODIC)

    async def ping() -> None:
        notify("WATCHDOG=1")

    async def reconcile() -> None:
        engine.request_reconcile("periodic")

    scheduler = build_scheduler(
        SchedulerConfig(
            config.daemon.equity_snapshot_seconds, config.reconciliation.interval_seconds, watchdog_interval()
        ),
        snapshot,
        reconcile,
        ping,
    )
    status, message, failure = m.RunStatus.FAILED, None, None
    try:
        await engine.reconcile_at_start()
        await engine.warm_up(last_bars, start)
        # What start-up built (model, modules, windows) lives as long as the process: out of the cyclic
        # collector's sight, whose full passes over it cost a batch of 1000 symbols 10-15 ms.
        gc.freeze()
        if live:  # wall-clock jobs mean nothing in a backtest that runs as fast as it can
            scheduler.start()
        notify("READY=1")
        log.info("started", book=book, strategies=list(engine.trading_states), live=live)
        stats = await engine.run()
        status = m.RunStatus.STOPPED if stats.stopped else m.RunStatus.COMPLETED
        return stats
    except BaseException as exc:
        message, failure = repr(exc), exc
        raise
    finally:
        notify("STOPPING=1")
        if scheduler.running:
            scheduler.shutdown(wait=False)
        finish = partial(journal.finish_run, status, engine.stats.bars, message)
        if isinstance(failure, DatabaseFaultError | SQLAlchemyError):
            # The database is what failed: one try, and a row left open is closed by the next start.
            try:
                finish()
            except SQLAlchemyError as exc:
                log.warning("run_left_open", error=type(getattr(exc, "orig", None) or exc).__name__)
        else:
            await database.write_once("finish_run", finish, stop)
        log.info("stopped", status=status.value, bars=engine.stats.bars, fills=engine.stats.fills)


def _after_batch(
    hook: Callable[[Engine], None] | None, stop_after: int | None
) -> Callable[[Engine], None] | None:
    if stop_after is None:
        return hook

    def check(engine: Engine) -> None:
        if hook is not None:
            hook(engine)
        if engine.stats.batches >= stop_after:
            engine.stop()

    return check
