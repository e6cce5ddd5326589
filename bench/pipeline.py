"""The daemon's engine assembled in process, as `bot.daemon` assembles it from the bundled config.toml,
for a universe of any size: the bundled model, the bar guard, features, strategy, sizing and every risk
check, the journal writing each batch to a fresh SQLite file (WAL, as the daemon's), the simulated broker
and the decision log (JSON at info level, into /dev/null as it would go into journald)."""

from __future__ import annotations

import bisect
import functools
import gc
import inspect
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from sqlalchemy.orm import Session, sessionmaker

import bot.engine
from bench.universe import Universe
from bot.bars import Bar
from bot.batching import Instant
from bot.brokers import BrokerContext
from bot.clock import MarketClock
from bot.config import AppConfig, StrategyConfig
from bot.daemon import load_strategy_model, make_runtime
from bot.engine import Engine, EngineConfig, StrategyRuntime
from bot.feeds import FeedItem
from bot.feeds.replay import ReplayFeed
from bot.journal import Journal
from bot.model import catalog
from bot.model.forecaster import model_forecaster
from bot.store import models as m
from bot.store.db import make_engine, session_factory, upgrade

STAGES = ("guard", "broker", "features", "inference", "strategy", "drift", "risk", "journal", "logging")

# Which calls make up each stage. A call made inside another timed call counts for its own stage only.
_ENGINE_CALLS = {
    "_guarded": "guard",
    "_handle_events": "broker",
    "_advance": "risk",
    "equity_point": "risk",
    "_view": "risk",
    "_send": "risk",
    "_flatten": "risk",
    "_record": "journal",
    "_sync_operator": "journal",
    "_log_decision": "logging",
}
_RUNTIME_CALLS = {
    "features": {
        "update": "features",
        "window": "features",
        "update_many": "features",
        "windows": "features",
    },
    "forecaster": {"predict": "inference", "observe": "inference"},
    "strategy": {"target": "strategy"},
    "sizer": {"observe_bar": "strategy", "observe_forecast": "strategy", "full_fraction": "strategy"},
    "drift": {"observe_outcome": "drift", "observe_prediction": "drift"},
    "risk": {"evaluate": "risk"},
    "tracker": {"update": "risk"},
}


class MemoryFeed:
    """A universe's bars as a Feed without a clock (a replay's market time is the time of its bars)."""

    def __init__(self, universe: Universe, start: int = 0) -> None:
        self._universe = universe
        self._times = universe.times
        self._start = start

    @property
    def clock(self) -> MarketClock | None:
        """None: market time is the time of the bars."""
        return None

    async def start(self) -> None:
        """Nothing to connect."""

    def resume_from(self, last_seen: Mapping[str, datetime]) -> None:
        """The benchmark decides where the stream starts."""

    async def stream(self) -> AsyncIterator[FeedItem]:
        """Nothing: the latency benchmark hands the engine its batches itself."""
        nothing: list[FeedItem] = []
        for item in nothing:
            yield item

    async def history(self, symbol: str, start: datetime, end: datetime) -> list[Bar]:
        """Bars with start <= ts < end."""
        lo, hi = bisect.bisect_left(self._times, start), bisect.bisect_left(self._times, end)
        return self._universe.bars[symbol][lo:hi]

    async def close(self) -> None:
        """Nothing to release."""


@dataclass
class StageClock:
    """Exclusive time per stage, from wrapped calls (each wrap costs about a microsecond a call)."""

    totals: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _stack: list[int] = field(default_factory=list)

    def reset(self) -> dict[str, float]:
        """The milliseconds since the last reset, by stage."""
        out = {stage: self.totals.get(stage, 0) / 1e6 for stage in STAGES}
        self.totals.clear()
        return out

    def _enter(self) -> int:
        self._stack.append(0)
        return time.perf_counter_ns()

    def _leave(self, stage: str, started: int) -> None:
        elapsed = time.perf_counter_ns() - started
        self.totals[stage] += elapsed - self._stack.pop()
        if self._stack:
            self._stack[-1] += elapsed

    def wrap(self, owner: object, name: str, stage: str) -> None:
        """Time `owner.name` (a method, sync or async) as `stage` from now on."""
        original = getattr(owner, name, None)
        if original is None:
            return
        if inspect.iscoroutinefunction(original):

            @functools.wraps(original)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                started = self._enter()
                try:
                    return await original(*args, **kwargs)
                finally:
                    self._leave(stage, started)

            setattr(owner, name, timed_async)
        else:

            @functools.wraps(original)
            def timed(*args: Any, **kwargs: Any) -> Any:
                started = self._enter()
                try:
                    return original(*args, **kwargs)
                finally:
                    self._leave(stage, started)

            setattr(owner, name, timed)

    @contextmanager
    def patched(self, module: Any, name: str, stage: str) -> Iterator[None]:
        """Time a module-level function the engine calls (restored afterwards)."""
        original = getattr(module, name)
        self.wrap(module, name, stage)
        try:
            yield
        finally:
            setattr(module, name, original)


def strategy_for(config: AppConfig, symbols: list[str], inference: str | None = None) -> StrategyConfig:
    """The bundled strategy, trading these symbols (and, if given, with this inference path)."""
    strategy = config.strategies[0]
    model = (
        strategy.model if inference is None else strategy.model.model_copy(update={"inference": inference})
    )
    return strategy.model_copy(update={"symbols": symbols, "model": model})


@dataclass
class Assembled:
    """An engine and what it was built from."""

    engine: Engine
    runtime: StrategyRuntime
    journal: Journal
    sessions: sessionmaker[Session]
    close: Callable[[], None]


def assemble(
    config: AppConfig,
    strategy: StrategyConfig,
    feed: Any,
    db: Path,
    device: torch.device,
    *,
    book: str = "bench",
    on_batch: Callable[[Engine], None] | None = None,
) -> Assembled:
    """The engine over `feed`, recording into the SQLite file `db` (created) as a backtest book."""
    loaded = load_strategy_model(0, strategy)
    forecaster = model_forecaster(loaded, strategy.symbols, device, strategy.model.inference)
    url = f"sqlite:///{db}"
    upgrade(url)
    engine_db = make_engine(url)
    sessions = session_factory(engine_db)
    cash = config.broker.initial_cash()
    if cash is None:
        raise SystemExit("the bundled config should trade the simulated broker")
    journal = Journal(sessions, Journal.open_book(sessions, book, m.BookKind.BACKTEST.value, cash))
    journal.start_run(m.RunCommand.BACKTEST.value, "")
    runtime = make_runtime(
        strategy, forecaster, loaded.card.target_scale, catalog.register(sessions, loaded.card, loaded.path)
    )
    engine = Engine(
        feed,
        config.broker.build(BrokerContext(strategy.symbols, backtest=True)),
        journal,
        [runtime],
        book=book,
        starting_cash=cash,
        config=EngineConfig(
            batch_linger_seconds=config.daemon.batch_linger_seconds, reconciliation=config.reconciliation
        ),
        on_batch=on_batch,
    )
    return Assembled(engine, runtime, journal, sessions, engine_db.dispose)


def instrument(assembled: Assembled, clock: StageClock) -> None:
    """Wrap the engine's stages in the clock."""
    engine, runtime = assembled.engine, assembled.runtime
    for name, stage in _ENGINE_CALLS.items():
        clock.wrap(engine, name, stage)
    broker = engine._broker
    for name in ("observe_bars", "submit"):
        clock.wrap(broker, name, "broker")
    for part, calls in _RUNTIME_CALLS.items():
        for name, stage in calls.items():
            clock.wrap(getattr(runtime, part), name, stage)


@dataclass(frozen=True)
class LatencyRun:
    """Milliseconds per batch, plain and by stage (from a second, instrumented run)."""

    symbols: int
    batches: list[float]
    stages: list[dict[str, float]]
    instrumented: list[float]


async def latency(
    config: AppConfig, *, universe: Universe, warmup: int, batches: int, db: Path, device: torch.device
) -> LatencyRun:
    """Warm the windows on `warmup` bars, run `batches` instants untimed (caches, allocator), then
    `batches` timed ones, then `batches` more with every stage timed."""
    strategy = strategy_for(config, universe.symbols)
    feed = MemoryFeed(universe)
    assembled = assemble(config, strategy, feed, db, device)
    engine = assembled.engine
    try:
        times = universe.times
        await engine.reconcile_at_start()
        await engine.warm_up({}, times[warmup])
        gc.freeze()  # as the daemon does after its warm-up

        async def one(index: int) -> float:
            bars = universe.instant(index)
            close = bars[0].close_time
            started = time.perf_counter()
            await engine.process_batch(Instant(close, close, bars))
            return (time.perf_counter() - started) * 1e3

        index = warmup
        for _ in range(batches):
            await one(index)
            index += 1
        plain = []
        for _ in range(batches):
            plain.append(await one(index))
            index += 1
        clock = StageClock()
        instrument(assembled, clock)
        stages, instrumented = [], []
        with clock.patched(bot.engine, "plan_order", "risk"):
            for _ in range(batches):
                instrumented.append(await one(index))
                stages.append(clock.reset())
                index += 1
        return LatencyRun(len(universe.symbols), plain, stages, instrumented)
    finally:
        gc.unfreeze()  # this run's objects may go now; the next run freezes its own
        assembled.close()


@dataclass(frozen=True)
class ReplayRun:
    """End-to-end replay: symbol-bars through the engine per second of wall time."""

    symbols: int
    symbol_bars: int
    seconds: float

    @property
    def bars_per_s(self) -> float:
        """Throughput."""
        return self.symbol_bars / self.seconds


async def replay(
    config: AppConfig, universe: Universe, warmup: int, folder: Path, device: torch.device
) -> ReplayRun:
    """The universe's CSV files through the replay feed (as fast as it can) and the whole engine, from
    bar `warmup` on: the clock runs from the first streamed bar to the last batch recorded."""
    files = universe.write_csv(folder / "csv")
    strategy = strategy_for(config, universe.symbols)
    start = universe.times[warmup]
    feed = ReplayFeed(files, dict.fromkeys(universe.symbols, strategy.bar_interval), speed=0.0, start=start)
    assembled = assemble(config, strategy, feed, folder / "replay.sqlite", device)
    engine = assembled.engine
    try:
        await engine.reconcile_at_start()
        await engine.warm_up({}, start)
        gc.freeze()
        started = time.perf_counter()
        stats = await engine.run()
        seconds = time.perf_counter() - started
        return ReplayRun(len(universe.symbols), stats.bars, seconds)
    finally:
        gc.unfreeze()  # this run's objects may go now; the next run freezes its own
        assembled.close()
