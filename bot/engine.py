"""The engine: one asyncio loop joining the stages of the bar path.

Feed -> BarGuard -> broker market step (fills) -> marks, equity, trading state -> FeatureEngine ->
Predictor (one batch per strategy) -> Strategy -> sizing + RiskEngine -> Journal (intent rows) -> Broker.

Bars that close at the same instant form one batch and one database transaction. Backtest and live differ
only in the feed and the broker they are given."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np

from bot.alerts import Alert, AlertKind, Severity
from bot.bars import Bar, BarGuard
from bot.brokers import Broker
from bot.config import StrategyConfig
from bot.drift import DriftMonitor
from bot.errors import BrokerError
from bot.features import FeatureEngine
from bot.feeds import Feed
from bot.journal import BatchRecord, BookState, Decision, EquityPoint, Journal
from bot.ledger import Ledger
from bot.logs import get_logger
from bot.model import Prediction
from bot.model.forecaster import Forecaster
from bot.orders import (
    BrokerOrder,
    Fill,
    OrderIntent,
    OrderStatus,
    Side,
    client_order_id,
    stored,
    to_decimal,
)
from bot.risk import (
    BarContext,
    OrderCounter,
    OrderRequest,
    PortfolioView,
    RiskDecision,
    RiskEngine,
    Sizer,
    StateCause,
    TradingState,
    TradingStateChange,
    TradingStateTracker,
    plan_order,
)
from bot.strategy import ForecastStrategy, Target

_END = object()  # end-of-stream marker on the bar queue


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """How long to wait for the rest of an instant's bars from a live feed before deciding, and how often
    (wall clock) to look for operator halts and resumes in the database."""

    batch_linger_seconds: float = 0.25
    warmup_max_days: int = 3650
    operator_poll_seconds: float = 1.0


@dataclass
class StrategyRuntime:
    """One strategy's stages, assembled by the daemon."""

    config: StrategyConfig
    features: FeatureEngine
    forecaster: Forecaster
    strategy: ForecastStrategy
    risk: RiskEngine
    tracker: TradingStateTracker
    drift: DriftMonitor
    sizer: Sizer
    model_version_id: int | None = None

    @property
    def name(self) -> str:
        """The strategy's name."""
        return self.config.name


@dataclass
class EngineStats:
    """Counters for the run summary."""

    batches: int = 0
    bars: int = 0
    fills: int = 0
    stopped: bool = False


class Engine:
    """Runs the bar path until the feed ends or `stop()` is called."""

    def __init__(
        self,
        feed: Feed,
        broker: Broker,
        journal: Journal,
        runtimes: Sequence[StrategyRuntime],
        *,
        book: str,
        starting_cash: Decimal,
        config: EngineConfig | None = None,
        on_batch: Callable[[Engine], None] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._book = book
        self._feed = feed
        self._broker = broker
        self._journal = journal
        self._runtimes = list(runtimes)
        self._config = config or EngineConfig()
        self._on_batch = on_batch
        self._owner = {s: rt for rt in self._runtimes for s in rt.config.symbols}
        # The clock the stale-data guard measures bar age against: a live feed's wall clock; None (replay)
        # means the batch's close time, so a replay is never stale however fast it runs.
        self._clock = clock
        self._last_ts: dict[str, datetime] = {}
        self._orders = {rt.name: OrderCounter() for rt in self._runtimes}
        for rt in self._runtimes:
            market = {s: r for s in rt.config.symbols if (r := broker.market_rules(s)) is not None}
            if market:
                rt.risk = rt.risk.with_market(market)
        self._guard = BarGuard()
        self.ledger = Ledger(starting_cash)
        self.marks: dict[str, Decimal] = {}
        self._pending: dict[str, OrderIntent] = {}
        self._stop = asyncio.Event()
        self._next_operator_poll = 0.0  # time.monotonic() of the next look for operator events
        self.stats = EngineStats()
        self._log = get_logger("paperbot.engine")

    # ---- lifecycle ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Finish the batch in hand, then return from `run()`."""
        self.stats.stopped = True
        self._stop.set()

    def restore(self, state: BookState) -> None:
        """Continue a book: ledger from its fills, marks and guard from its last bars, states, open orders."""
        for fill in state.fills:
            self.ledger.apply(fill)
        for symbol, (ts, close) in state.last_bars.items():
            self.marks[symbol] = close
            self._guard.seed(symbol, ts)
            self._last_ts[symbol] = ts
        for rt in self._runtimes:
            saved = state.trading_states.get(rt.name)
            if saved is not None:
                rt.tracker.restore(saved)
            if state.last_bars and all(s in self.marks for s in self.ledger.positions()):
                rt.tracker.last_equity = self.equity_point(datetime.now(UTC)).equity
        for strategy, bar_ts in state.recent_orders:
            if strategy in self._orders:
                self._orders[strategy].add(bar_ts + self._owner_interval(strategy))
        self._pending = {intent.client_order_id: intent for intent, _ in state.open_orders}
        self._feed.resume_from({s: ts for s, (ts, _) in state.last_bars.items()})

    async def reconcile(self, state: BookState) -> None:
        """Settle orders left NEW or UNKNOWN by a stop: send what never arrived, adopt what did."""
        for intent, status in state.open_orders:
            if status not in (OrderStatus.NEW, OrderStatus.UNKNOWN):
                continue
            known = await self._broker.order_by_client_id(intent.client_order_id)
            if known is None:
                await self._submit(intent)
            else:
                self._journal.update_order(known)

    async def warm_up(self, before: dict[str, datetime]) -> None:
        """Fill the feature windows from history so the first live bar can be decided on.

        Bars pass a scratch guard exactly as they would have live, so the windows equal those of a run
        that never stopped."""
        scratch = BarGuard()
        for rt in self._runtimes:
            need = rt.features.warmup_bars
            for symbol in rt.config.symbols:
                end = before.get(symbol)
                if end is None:
                    continue
                span = rt.config.bar_interval * need * 2
                while True:
                    bars = await self._feed.history(symbol, end - span, end)
                    if len(bars) >= need or span > timedelta(days=self._config.warmup_max_days):
                        break
                    span *= 2
                for bar in bars:
                    if scratch.check(bar) is None:
                        rt.features.update(bar)
                        rt.forecaster.observe(bar)
                        rt.sizer.observe_bar(bar.symbol, bar.open, bar.close)
        self._log.info(
            "warmed_up", symbols={s: rt.features.ready(s) for rt in self._runtimes for s in rt.config.symbols}
        )

    async def run(self) -> EngineStats:
        """Consume the feed batch by batch until it ends or `stop()` is called."""
        now = datetime.now(UTC)
        self._journal.record_alerts(
            [
                Alert(now, Severity.WARNING, AlertKind.FEED_PROBLEM, p.message, symbol=p.symbol)
                for p in self._feed.drain_problems()
            ]
        )
        async for batch in self._batches():
            await self.process_batch(batch)
            if self._on_batch is not None:
                self._on_batch(self)
            if self._stop.is_set():
                break
        return self.stats

    async def _batches(self) -> AsyncIterator[list[Bar]]:
        """Group bars closing at the same instant; a live feed gets `batch_linger_seconds` to finish one."""
        queue: asyncio.Queue[object] = asyncio.Queue(maxsize=10_000)

        async def produce() -> None:
            try:
                async for bar in self._feed.stream():
                    await queue.put(bar)
            finally:
                await queue.put(_END)

        producer = asyncio.create_task(produce(), name="feed")
        stopper = asyncio.create_task(self._stop.wait(), name="stop")
        held: object = None
        try:
            while not self._stop.is_set():
                item = held if held is not None else await self._next(queue, stopper, None)
                held = None
                if item is _END or item is None:
                    break
                assert isinstance(item, Bar)
                batch = [item]
                while True:
                    nxt = await self._next(queue, stopper, self._config.batch_linger_seconds)
                    if isinstance(nxt, Bar) and nxt.close_time == item.close_time:
                        batch.append(nxt)
                        continue
                    held = nxt
                    break
                if self._stop.is_set():
                    # The instant may be incomplete: leave all of it to the next run, which replays it whole.
                    break
                yield batch
        finally:
            stopper.cancel()
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
            if producer.done() and not producer.cancelled() and producer.exception() is not None:
                raise producer.exception()  # type: ignore[misc]

    @staticmethod
    async def _next(
        queue: asyncio.Queue[object], stopper: asyncio.Task[bool], timeout: float | None
    ) -> object:
        """The next item, or None on timeout or stop."""
        if not queue.empty():
            return queue.get_nowait()
        getter = asyncio.ensure_future(queue.get())
        done, _ = await asyncio.wait({getter, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await getter
        return None

    # ---- one batch ------------------------------------------------------------------------------

    async def process_batch(self, bars: Sequence[Bar]) -> None:
        """Every stage, for the bars that closed at one instant."""
        now = bars[0].close_time
        record = BatchRecord(ts=now)
        accepted: list[Bar] = []
        for bar in bars:
            rejection = self._guard.check(bar)
            if rejection is None:
                accepted.append(bar)
                continue
            owner = self._owner.get(bar.symbol)
            record.alerts.append(
                Alert(
                    now,
                    Severity.WARNING,
                    AlertKind.BAR_REJECTED,
                    f"bar rejected: {rejection.detail}",
                    owner.name if owner else None,
                    bar.symbol,
                    {"reason": rejection.reason.value, "bar_ts": bar.ts.isoformat()},
                )
            )
            self._log.warning(
                "bar_rejected",
                symbol=bar.symbol,
                bar_ts=bar.ts.isoformat(),
                reason=rejection.reason.value,
                detail=rejection.detail,
            )
        accepted = [b for b in accepted if b.symbol in self._owner]
        record.bars = accepted
        record.timeframes = {b.symbol: self._owner[b.symbol].config.timeframe for b in accepted}

        self._sync_operator()
        fills = await self._broker.on_bars(accepted)
        self._apply_fills(fills, record)
        contexts = self._bar_contexts(accepted, now)
        for bar in accepted:
            self.marks[bar.symbol] = stored(to_decimal(bar.close))
        equity = self.equity_point(now).equity
        for rt in self._runtimes:
            for change in rt.tracker.update(equity, now):
                self._state_changed(change, record)
            record.trackers.append(rt.tracker)
        record.equity = self.equity_point(now)

        intents: list[OrderIntent] = []
        for rt in self._runtimes:
            own = [b for b in accepted if b.symbol in rt.config.symbols]
            if own:
                intents.extend(self._flatten(rt, own, equity, record, contexts))
                intents.extend(self._decide(rt, own, equity, record, contexts))

        self._journal.record_batch(record)
        for intent in intents:
            await self._submit(intent)
        self.stats.batches += 1
        self.stats.bars += len(accepted)

    def _apply_fills(self, fills: Sequence[Fill], record: BatchRecord) -> None:
        for fill in fills:
            self.ledger.apply(fill)
            self._pending.pop(fill.client_order_id, None)
            self._log.info(
                "fill",
                strategy=fill.strategy,
                symbol=fill.symbol,
                side=fill.side.value,
                qty=str(fill.qty),
                price=str(fill.price),
                commission=str(fill.commission),
                ts=fill.ts.isoformat(),
                client_order_id=fill.client_order_id,
            )
        self.stats.fills += len(fills)
        record.fills = list(fills)
        record.positions = [self.ledger.position(s) for s in sorted({f.symbol for f in fills})]

    def _pending_qty(self) -> dict[str, Decimal]:
        pending: dict[str, Decimal] = {}
        for intent in self._pending.values():
            pending[intent.symbol] = pending.get(intent.symbol, Decimal(0)) + intent.side.sign * intent.qty
        return pending

    # ---- risk path ------------------------------------------------------------------------------

    def _owner_interval(self, strategy: str) -> timedelta:
        return next(rt.config.bar_interval for rt in self._runtimes if rt.name == strategy)

    def _sync_operator(self) -> None:
        """Apply `paperbot halt`/`resume` recorded since the last batch (the CLI writes the event row; the
        daemon only follows it, so nothing is recorded twice). A resume re-bases at the current equity.

        At most once per operator_poll_seconds: a query per batch would cost a replay a tenth of its time."""
        now = time.monotonic()
        if now < self._next_operator_poll:
            return
        self._next_operator_poll = now + self._config.operator_poll_seconds
        after = min((rt.tracker.event_id for rt in self._runtimes), default=0)
        by_name = {rt.name: rt for rt in self._runtimes}
        for event in self._journal.operator_events(after):
            rt = by_name.get(event.scope)
            if rt is None or event.id <= rt.tracker.event_id:
                continue
            equity = self.equity_point(event.ts).equity if self.marks else None
            rt.tracker.operator(event.state, event.reason, event.ts, equity)
            rt.tracker.event_id = event.id
            self._log.warning("trading_state", strategy=rt.name, state=event.state.value, source="operator")

    def _state_changed(self, change: TradingStateChange, record: BatchRecord) -> None:
        record.state_changes.append(change)
        record.alerts.append(
            Alert(
                change.ts,
                Severity.CRITICAL if change.state is not TradingState.ACTIVE else Severity.WARNING,
                AlertKind.TRADING_STATE,
                f"{change.previous} -> {change.state}: {change.reason}",
                change.scope,
                None,
                {"state": change.state.value, "previous": change.previous.value, "source": change.source},
            )
        )
        self._log.warning(
            "trading_state", strategy=change.scope, state=change.state.value, reason=change.reason
        )

    def _bar_contexts(self, bars: Sequence[Bar], now: datetime) -> dict[str, BarContext]:
        """What the stale-data and price-band guards compare each bar with (read before marks move)."""
        clock = self._clock() if self._clock is not None else now
        contexts = {}
        for bar in bars:
            contexts[bar.symbol] = BarContext(
                clock,
                bar.close_time,
                bar.timeframe,
                self._last_ts.get(bar.symbol),
                self.marks.get(bar.symbol),
                bar.ts,
            )
            self._last_ts[bar.symbol] = bar.ts
        return contexts

    def _view(self, rt: StrategyRuntime, equity: Decimal, now: datetime) -> PortfolioView:
        today, this_second = self._orders[rt.name].counts(now, rt.tracker.day_start)
        return PortfolioView(
            equity,
            self.ledger.cash,
            {s: p.qty for s, p in self.ledger.positions().items()},
            self._pending_qty(),
            self.marks,
            rt.tracker.drawdown(equity),
            rt.tracker.state,
            rt.tracker.daily_loss(equity),
            today,
            this_second,
        )

    def _send(
        self, rt: StrategyRuntime, decision: RiskDecision, record: BatchRecord, sequence: int = 0
    ) -> OrderIntent | None:
        """Journal the decision; an approved quantity becomes an intent (pending, counted, sent later)."""
        request, intent = decision.request, None
        if decision.approved_qty > 0:
            intent = OrderIntent(
                client_order_id(self._book, rt.name, request.symbol, request.bar_ts, sequence),
                rt.name,
                request.symbol,
                request.side,
                decision.approved_qty,
                request.bar_ts,
            )
            self._pending[intent.client_order_id] = intent
            self._orders[rt.name].add(request.bar.now if request.bar else request.bar_ts)
        record.decisions.append(Decision(decision, intent))
        return intent

    def _flatten(
        self,
        rt: StrategyRuntime,
        bars: Sequence[Bar],
        equity: Decimal,
        record: BatchRecord,
        contexts: dict[str, BarContext],
    ) -> list[OrderIntent]:
        """After a drawdown or daily-loss breach with `flatten_on_breach`, close what is held: reduce-only
        orders through every check, again on later bars for whatever a check held back."""
        tracker = rt.tracker
        breach = tracker.cause in (StateCause.MAX_DRAWDOWN, StateCause.DAILY_LOSS)
        if not (rt.config.risk.flatten_on_breach and breach and tracker.state is not TradingState.ACTIVE):
            return []
        intents = []
        for bar in bars:
            context = contexts[bar.symbol]
            view = self._view(rt, equity, context.now)
            exposure = view.exposure(bar.symbol)
            if exposure == 0:
                continue
            side = Side.SELL if exposure > 0 else Side.BUY
            price = self.marks[bar.symbol]
            request = OrderRequest(rt.name, bar.symbol, bar.ts, side, abs(exposure), price, context, True)
            intent = self._send(rt, rt.risk.evaluate(request, view), record, sequence=1)
            if intent is not None:
                intents.append(intent)
        return intents

    def _decide(
        self,
        rt: StrategyRuntime,
        bars: Sequence[Bar],
        equity: Decimal,
        record: BatchRecord,
        contexts: dict[str, BarContext],
    ) -> list[OrderIntent]:
        ready: list[Bar] = []
        for bar in bars:
            rt.sizer.observe_bar(bar.symbol, bar.open, bar.close)
            # This bar's open-to-close return is what the previous prediction for the symbol was about.
            realized = math.log(bar.close / bar.open)
            record.alerts.extend(rt.drift.observe_outcome(bar.symbol, bar.close_time, realized))
            rt.forecaster.observe(bar)
            is_ready = rt.features.update(bar)
            record.alerts.extend(self._outlier_alerts(rt, bar))
            if is_ready:
                ready.append(bar)
            else:
                self._log_decision(rt, bar)
        if not ready:
            return []
        predicted = rt.forecaster.predict(ready, np.stack([rt.features.window(b.symbol) for b in ready]))
        intents = []
        horizons = rt.forecaster.horizons
        for bar, values in zip(ready, predicted.tolist(), strict=True):
            value = values[0]  # decisions are about the next bar; longer horizons are recorded beside it
            prediction = Prediction(rt.name, bar.symbol, bar.ts, value, 1, rt.forecaster.version)
            rt.drift.observe_prediction(bar.symbol, bar.close_time, value)
            target = rt.strategy.target(prediction)
            record.predictions.append((target, rt.model_version_id))
            record.predictions.extend(
                (
                    replace(target, prediction=replace(prediction, predicted_return=v, horizon=h)),
                    rt.model_version_id,
                )
                for h, v in zip(horizons[1:], values[1:], strict=True)
            )
            rt.sizer.observe_forecast(bar.symbol, value)
            context = contexts[bar.symbol]
            view = self._view(rt, equity, context.now)
            request = plan_order(
                target,
                view,
                self.marks[bar.symbol],
                rt.config.risk,
                rt.config.rebalance_band,
                full_fraction=rt.sizer.full_fraction(bar.symbol, value),
                rules=rt.risk.rules(bar.symbol),
                bar=context,
            )
            if request is None:
                self._log_decision(rt, bar, target)
                continue
            decision = rt.risk.evaluate(request, view)
            intent = self._send(rt, decision, record)
            if intent is not None:
                intents.append(intent)
            self._log_decision(rt, bar, target, decision, intent)
        return intents

    @staticmethod
    def _outlier_alerts(rt: StrategyRuntime, bar: Bar) -> list[Alert]:
        """An alert when the feature stage flagged this very bar as a split-like jump (and rescaled)."""
        outlier = rt.features.last_outlier(bar.symbol)
        if outlier is None or outlier.ts != bar.ts:
            return []
        message = (
            f"one-bar jump x{outlier.ratio:.4f} beyond {outlier.threshold:.3f} in log terms (a split or a"
            " crash?): the feature history was rescaled"
        )
        details = {
            "ratio": outlier.ratio,
            "gap": outlier.gap,
            "move": outlier.move,
            "bar_ts": bar.ts.isoformat(),
        }
        return [
            Alert(
                bar.close_time, Severity.WARNING, AlertKind.OUTLIER_BAR, message, rt.name, bar.symbol, details
            )
        ]

    def _log_decision(
        self,
        rt: StrategyRuntime,
        bar: Bar,
        target: Target | None = None,
        decision: RiskDecision | None = None,
        intent: OrderIntent | None = None,
    ) -> None:
        """The one JSON line per bar: what the model said, what the strategy wanted, what risk allowed."""
        self._log.info(
            "decision",
            strategy=rt.name,
            symbol=bar.symbol,
            bar_ts=bar.ts.isoformat(),
            close=bar.close,
            warming_up=target is None,
            prediction=None if target is None else round(target.prediction.predicted_return, 8),
            target_weight=None if target is None else round(target.weight, 4),
            position=str(self.ledger.qty(bar.symbol)),
            state=rt.tracker.state.value,
            risk=None
            if decision is None
            else {
                "outcome": decision.outcome.value,
                "reason": decision.reason,
                "requested": str(decision.request.qty),
                "approved": str(decision.approved_qty),
            },
            order=None
            if intent is None
            else {
                "side": intent.side.value,
                "qty": str(intent.qty),
                "client_order_id": intent.client_order_id,
            },
        )

    async def _submit(self, intent: OrderIntent) -> None:
        """Send one journaled intent. An error leaves it UNKNOWN (reconciled later), never re-sent blindly."""
        try:
            order = await self._broker.submit(intent)
        except BrokerError as exc:
            order = BrokerOrder(intent.client_order_id, None, OrderStatus.UNKNOWN, reason=str(exc))
            self._journal.record_alerts(
                [
                    Alert(
                        intent.bar_ts,
                        Severity.WARNING,
                        AlertKind.BROKER_ERROR,
                        f"submit failed, order state unknown: {exc}",
                        intent.strategy,
                        intent.symbol,
                    )
                ]
            )
        if order.status is OrderStatus.REJECTED:
            self._pending.pop(intent.client_order_id, None)
        self._journal.update_order(order)

    def equity_point(self, ts: datetime) -> EquityPoint:
        """The account marked at the last closes, at stored precision: equity is exactly cash + positions
        value as the snapshot row will hold them, and the drawdown is measured on that same number."""
        cash = stored(self.ledger.cash)
        value = stored(self.ledger.positions_value(self.marks))
        equity = cash + value
        peak = max((rt.tracker.peak for rt in self._runtimes if rt.tracker.peak is not None), default=equity)
        return EquityPoint(ts, cash, value, equity, peak)

    @property
    def trading_states(self) -> dict[str, TradingState]:
        """State by strategy."""
        return {rt.name: rt.tracker.state for rt in self._runtimes}
