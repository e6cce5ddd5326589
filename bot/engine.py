"""The engine: one asyncio loop joining the stages of the bar path.

Feed -> Batcher (one instant at a time) -> BarGuard -> broker market step -> marks, equity, trading state ->
FeatureEngine -> Predictor (one batch per strategy) -> Strategy -> sizing + RiskEngine -> Journal (intent
rows) -> Broker. Beside the bars, the broker's events (order updates, fills) and reconciliation passes.

Bars that close at the same instant form one batch and one database transaction. Backtest and live differ
only in the feed and the broker they are given."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from bot.alerts import Alert, AlertKind, Severity
from bot.bars import Bar, BarGuard, BarGuardConfig, BarRejection, Jump
from bot.batching import Batcher, Instant
from bot.brokers import Broker, BrokerEvent, BrokerStatus
from bot.config import ReconciliationSettings, StrategyConfig
from bot.drift import DriftMonitor
from bot.errors import BrokerError, BrokerUnavailableError, DatabaseFaultError, TemporaryError
from bot.features import FeatureEngine
from bot.feeds import BarRevision, Feed, FeedItem
from bot.journal import BatchRecord, BookState, Decision, EquityPoint, Journal
from bot.ledger import Ledger, Split
from bot.logs import JsonLines, get_logger
from bot.model.forecaster import Forecaster
from bot.orders import (
    FILL_MEMORY,
    BrokerOrder,
    Fill,
    OpenOrder,
    OrderIntent,
    OrderStatus,
    OrderUpdate,
    RecentFills,
    Side,
    client_order_id,
    stored,
    to_decimal,
)
from bot.reconcile import BookView, Mismatch, Reconciler
from bot.risk import (
    BarContext,
    ExposureTotals,
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
from bot.store.retry import DatabaseRetry
from bot.strategy import ForecastStrategy, Prediction, Target

T = TypeVar("T")
_END = object()  # end-of-stream marker on the bar queue


def _latest(current: datetime | None, ts: datetime) -> datetime:
    return ts if current is None else max(current, ts)


_MAX_BACKOFF = 60.0  # seconds between retries of a reconciliation the broker could not answer


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """How long an instant waits for the rest of its bars (market time), how far back warm-up may look,
    how often (wall clock) to look for operator halts and resumes, how reconciliation judges, and what
    the bar guard lets through."""

    batch_linger_seconds: float = 0.25
    warmup_max_days: int = 3650
    operator_poll_seconds: float = 1.0
    reconciliation: ReconciliationSettings = field(default_factory=ReconciliationSettings)
    guard: BarGuardConfig = field(default_factory=BarGuardConfig)


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
        database: DatabaseRetry | None = None,
    ) -> None:
        """`database` redoes journal calls after a temporary database fault (else they are tried once)."""
        self._book = book
        self._feed = feed
        self._broker = broker
        self._journal = journal
        self._runtimes = list(runtimes)
        self._config = config or EngineConfig()
        self._on_batch = on_batch
        self._database = database
        self._owner = {s: rt for rt in self._runtimes for s in rt.config.symbols}
        self._last_ts: dict[str, datetime] = {}
        self._orders = {rt.name: OrderCounter() for rt in self._runtimes}
        for rt in self._runtimes:
            market = {s: r for s in rt.config.symbols if (r := broker.market_rules(s)) is not None}
            if market:
                rt.risk = rt.risk.with_market(market)
        self._guard = BarGuard(self._config.guard)
        self._batcher = Batcher(
            [rt.config.symbols for rt in self._runtimes], timedelta(seconds=self._config.batch_linger_seconds)
        )
        self._reconciler = Reconciler(broker, self._config.reconciliation, list(self._owner))
        self.ledger = Ledger(starting_cash)
        self.marks: dict[str, Decimal] = {}
        self._pending: dict[str, OpenOrder] = {}
        self._fill_ids = RecentFills()
        self._last_fill_ts: datetime | None = None
        self._seen: datetime | None = None  # the latest bar close taken: all the market time a replay has
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()  # something besides a bar or a broker event wants the loop's attention
        self._reconcile_why: str | None = None
        self._reconcile_backoff = 0.0
        self._mismatches: frozenset[str] = frozenset()  # what the last pass alerted (and halted) on
        self._foreign_alerted: set[str] = set()
        self._broker_down = False
        self._next_operator_poll = 0.0  # time.monotonic() of the next look for operator events
        self.stats = EngineStats()
        self._log = get_logger("paperbot.engine")
        self._decisions = JsonLines("paperbot.engine")  # one line per bar: the hot path's own writer

    # ---- lifecycle ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Finish the batch in hand, then return from `run()`."""
        self.stats.stopped = True
        self._stop.set()

    def market_now(self) -> datetime:
        """Market time: the venue's clock where the feed has one, never before the latest bar taken."""
        clock = self._feed.clock
        venue = clock.now() if clock is not None else None
        if self._seen is None:
            return venue or datetime.now(UTC)
        return self._seen if venue is None else max(self._seen, venue)

    def restore(self, state: BookState) -> None:
        """Continue a book: ledger from its fills and splits, marks and guard from its last bars, states,
        open orders."""
        self.ledger = Ledger.from_fills(self.ledger.starting_cash, state.fills, state.splits)
        for fill in state.fills:
            self._fill_ids.add(fill)
            self._last_fill_ts = _latest(self._last_fill_ts, fill.ts)
        for symbol, (ts, close) in state.last_bars.items():
            self.marks[symbol] = close
            self._guard.seed(symbol, ts, float(close))
            self._last_ts[symbol] = ts
            self._seen = _latest(self._seen, ts + self._interval_of(symbol))
        for rt in self._runtimes:
            saved = state.trading_states.get(rt.name)
            if saved is not None:
                rt.tracker.restore(saved)
            if state.last_bars and all(s in self.marks for s in self.ledger.positions()):
                rt.tracker.last_equity = self.equity_point(datetime.now(UTC)).equity
        for strategy, bar_ts in state.recent_orders:
            if strategy in self._orders:
                self._orders[strategy].add(bar_ts + self._owner_interval(strategy))
        self._pending = {o.intent.client_order_id: o for o in state.open_orders}
        self._forget_old_fills()

    async def warm_up(self, last_bars: dict[str, datetime], start: datetime | None) -> None:
        """Fill the feature windows from the feed's history so the first bar can be decided on, then tell
        the feed where to resume. History ends after a symbol's last handled bar, else at `start`, else
        (a live book's first run) now on the market clock.

        Bars pass a scratch guard exactly as they would have live, so the windows equal those of a run
        that never stopped; a new symbol's guard then starts from the last bar accepted there."""
        scratch = BarGuard(self._config.guard)
        resume = dict(last_bars)
        live_now = self.market_now() if self._feed.clock is not None else None
        for rt in self._runtimes:
            need = rt.features.warmup_bars
            history: list[Bar] = []  # every symbol's accepted bars, for one update_many at the end
            for symbol in rt.config.symbols:
                end = (
                    last_bars[symbol] + timedelta(microseconds=1)
                    if symbol in last_bars
                    else start or live_now
                )
                if end is None:
                    continue
                span = rt.config.bar_interval * need * 2
                while True:
                    bars = await self._feed.history(symbol, end - span, end)
                    if len(bars) >= need or span > timedelta(days=self._config.warmup_max_days):
                        break
                    span *= 2
                for bar in bars:
                    for good in scratch.take(bar).accepted:
                        history.append(good)
                        rt.forecaster.observe(good)
                        rt.sizer.observe_bar(good.symbol, good.open, good.close)
                last_ts, last_close = scratch.last_ts(symbol), scratch.last_close(symbol)
                if symbol not in resume and last_ts is not None:
                    resume[symbol] = last_ts
                    self._guard.seed(symbol, last_ts, last_close)
            rt.features.update_many(history)  # the k-th bar of every symbol in pass k: numpy across them
        self._feed.resume_from(resume)
        self._log.info(
            "warmed_up", symbols={s: rt.features.ready(s) for rt in self._runtimes for s in rt.config.symbols}
        )

    async def run(self) -> EngineStats:
        """Consume the feed batch by batch, and the broker's events beside it, until the feed ends or
        `stop()` is called."""
        queue: asyncio.Queue[object] = asyncio.Queue(maxsize=10_000)
        producer = asyncio.create_task(self._produce(queue), name="feed")
        try:
            while not self._stop.is_set():
                await self._chores()
                item = await self._next(queue)
                ended = item is _END
                if item is not None and not ended:
                    await self._take(item)  # type: ignore[arg-type]
                for instant in self._batcher.due(self.market_now(), flush=ended):
                    if self._stop.is_set():
                        break  # leave the rest whole to the next run, which replays it
                    await self.process_batch(instant)
                    if self._on_batch is not None:
                        self._on_batch(self)
                if ended:
                    break
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
            if producer.done() and not producer.cancelled() and producer.exception() is not None:
                raise producer.exception()  # type: ignore[misc]
        return self.stats

    async def _produce(self, queue: asyncio.Queue[object]) -> None:
        try:
            async for item in self._feed.stream():
                await queue.put(item)
        finally:
            await queue.put(_END)

    async def _next(self, queue: asyncio.Queue[object]) -> object:
        """The next feed item; None when something else needs the loop first (a broker event, a chore,
        the stop, or an instant's linger running out)."""
        if not queue.empty():
            return queue.get_nowait()
        timeout = None
        deadline = self._batcher.deadline()
        if deadline is not None and self._feed.clock is not None:
            timeout = self._feed.clock.seconds_until(deadline)
        getter = asyncio.ensure_future(queue.get())
        others = [
            asyncio.ensure_future(self._broker.events.wait()),
            asyncio.ensure_future(self._wake.wait()),
            asyncio.ensure_future(self._stop.wait()),
        ]
        try:
            done, _ = await asyncio.wait(
                {getter, *others}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in others:
                waiter.cancel()
        if getter in done:
            return getter.result()
        getter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await getter
        return None

    async def _take(self, item: FeedItem) -> None:
        """A feed item into the batcher, or straight into the journal (late bars, revisions, alerts)."""
        if isinstance(item, Alert):
            await self._record_alerts([item])
            self._log.warning(item.kind.value, symbol=item.symbol, message=item.message)
        elif isinstance(item, BarRevision):
            if self._batcher.revise(item.bar):
                self._log.info("bar_revised", symbol=item.bar.symbol, bar_ts=item.bar.ts.isoformat())
            else:
                await self._record_bar_alert(
                    item.bar, AlertKind.BAR_REVISED, f"revised after its decision: {item.reason}"
                )
        else:
            clock = self._feed.clock
            future = self._guard.from_the_future(
                item, clock.now() if clock is not None else datetime.now(UTC)
            )
            if future is not None:
                await self._record_alerts([self._rejected(future, self.market_now())])
                return
            self._seen = _latest(self._seen, item.close_time)
            if not self._batcher.add(item, self.market_now()):
                await self._record_bar_alert(
                    item, AlertKind.LATE_BAR, "arrived after its instant was decided"
                )

    async def _record_bar_alert(self, bar: Bar, kind: AlertKind, message: str) -> None:
        """A late or revised bar, recorded in an alert with its values: it is never traded on."""
        decided = self._batcher.decided.isoformat() if self._batcher.decided else None
        values = {
            "open": bar.open,
            "high": bar.high,
            "low": bar.low,
            "close": bar.close,
            "volume": bar.volume,
        }
        alert = self._bar_alert(bar, kind, message, self.market_now(), {**values, "decided": decided})
        await self._record_alerts([alert])

    def _rejected(self, rejection: BarRejection, ts: datetime) -> Alert:
        """The alert of a bar the guard refused: it is never traded on."""
        details = {"reason": rejection.reason.value}
        return self._bar_alert(
            rejection.bar, AlertKind.BAR_REJECTED, f"bar rejected: {rejection.detail}", ts, details
        )

    def _bar_alert(
        self, bar: Bar, kind: AlertKind, message: str, ts: datetime, details: dict[str, Any]
    ) -> Alert:
        """An alert about one bar (and its log line), with the bar's time and the strategy that owns it."""
        self._log.warning(
            kind.value, symbol=bar.symbol, bar_ts=bar.ts.isoformat(), message=message, **details
        )
        owner = self._owner.get(bar.symbol)
        details = {"bar_ts": bar.ts.isoformat(), **details}
        return Alert(ts, Severity.WARNING, kind, message, owner.name if owner else None, bar.symbol, details)

    # ---- the broker's side ----------------------------------------------------------------------

    async def _chores(self) -> None:
        """Between batches: what the broker reported, and a reconciliation when one is due."""
        self._wake.clear()
        events = self._broker.events.drain()
        if events:
            record = BatchRecord(ts=self.market_now())
            await self._handle_events(events, record)
            await self._record(record)
        if self._reconcile_why is not None:
            why, self._reconcile_why = self._reconcile_why, None
            await self.reconcile(why)

    def request_reconcile(self, why: str, delay: float = 0.0) -> None:
        """Ask for a reconciliation pass between batches (now, or after `delay` seconds)."""

        def due() -> None:
            self._reconcile_why = self._reconcile_why or why
            self._wake.set()

        if delay > 0:
            asyncio.get_running_loop().call_later(delay, due)
        else:
            due()

    async def _handle_events(self, events: Sequence[BrokerEvent], record: BatchRecord) -> None:
        updates = [e for e in events if isinstance(e, OrderUpdate)]
        await self._apply_updates(updates, record)
        for event in events:
            if isinstance(event, BrokerStatus):
                self._broker_status(event, record)

    def _broker_status(self, event: BrokerStatus, record: BatchRecord) -> None:
        if not event.connected:
            self._broker_down = True
            record.alerts.append(
                Alert(
                    event.ts, Severity.WARNING, AlertKind.BROKER_ERROR, f"order stream down: {event.detail}"
                )
            )
            self._log.warning("broker_stream_down", detail=event.detail)
        elif self._broker_down:
            # A stream does not replay what happened while it was down: sweep the broker's records.
            self._broker_down = False
            self._log.info("broker_stream_back")
            self.request_reconcile("order stream reconnected")

    async def _ours(self, cids: set[str]) -> set[str]:
        """Which of these client order ids the journal holds."""
        known = {c for c in cids if c in self._pending}
        rest = cids - known
        if not rest:
            return known
        return known | await self._database_call("known_orders", lambda: self._journal.known_orders(rest))

    async def _apply_updates(self, updates: Sequence[OrderUpdate], record: BatchRecord) -> None:
        """Record the broker's news: each fill once (by broker fill id) into the one ledger, each status
        forward; a partial fill leaves the rest of the order open."""
        fresh: list[OrderUpdate] = []
        for reported in updates:
            update, fill = reported, reported.fill
            if fill is not None and await self._known_fill(fill):
                if update.order is None:
                    continue  # a fill already recorded, reported again by another path
                update, fill = replace(update, fill=None), None
            cid = update.client_order_id
            pending = self._pending.get(cid)
            if pending is None and cid not in await self._ours({cid}):
                self._foreign(update, record)
                continue
            if fill is not None:
                self.ledger.apply(fill)
                self._fill_ids.add(fill)
                self._last_fill_ts = _latest(self._last_fill_ts, fill.ts)
                self.stats.fills += 1
                self._log.info(
                    "fill",
                    symbol=fill.symbol,
                    side=fill.side.value,
                    qty=str(fill.qty),
                    price=str(fill.price),
                    commission=str(fill.commission),
                    ts=fill.ts.isoformat(),
                    client_order_id=cid,
                    broker_fill_id=fill.broker_fill_id,
                )
                if pending is not None:
                    pending = replace(pending, filled_qty=pending.filled_qty + fill.qty)
                    self._pending[cid] = pending
            if pending is not None:
                order = update.order
                if order is not None and pending.status.may_become(order.status):
                    known = order.broker_order_id or pending.broker_order_id
                    pending = replace(pending, status=order.status, broker_order_id=known)
                    self._pending[cid] = pending
                if pending.remaining <= 0 or not pending.status.is_open:
                    del self._pending[cid]
                    if pending.status is OrderStatus.REJECTED:
                        record.alerts.append(self._rejected_alert(pending.intent, order))
            fresh.append(update)
        record.updates.extend(fresh)
        symbols = sorted({u.fill.symbol for u in fresh if u.fill is not None})
        record.positions.extend(self.ledger.position(s) for s in symbols)

    def _foreign(self, update: OrderUpdate, record: BatchRecord) -> None:
        """News of an order paperbot never sent: alerted once; its fills show up as a position mismatch."""
        cid = update.client_order_id
        if cid in self._foreign_alerted:
            return
        self._foreign_alerted.add(cid)
        symbol = update.fill.symbol if update.fill is not None else None
        record.alerts.append(
            Alert(
                update.ts,
                Severity.WARNING,
                AlertKind.RECONCILIATION,
                f"the broker reports order {cid}, which paperbot did not send",
                symbol=symbol,
                details={"client_order_id": cid},
            )
        )

    @staticmethod
    def _rejected_alert(intent: OrderIntent, order: BrokerOrder | None) -> Alert:
        reason = order.reason if order is not None and order.reason else "no reason given"
        return Alert(
            intent.bar_ts,
            Severity.WARNING,
            AlertKind.ORDER_REJECTED,
            f"{intent.side} {intent.qty} {intent.symbol} rejected: {reason}",
            intent.strategy,
            intent.symbol,
            {"client_order_id": intent.client_order_id},
        )

    async def reconcile_at_start(self) -> None:
        """The start-up reconciliation, retried with backoff while the broker cannot answer: nothing is
        traded before it has finished."""
        delay = 1.0
        while not await self.reconcile("start"):
            if self._stop.is_set():
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, _MAX_BACKOFF)

    async def reconcile(self, why: str) -> bool:
        """One reconciliation pass, applied: order states and missed fills recorded, orders that never
        reached the broker sent (while their bar is fresh) or expired, mismatches alerted and halted on.
        False when the broker could not answer (a retry is scheduled)."""
        now = self.market_now()
        view = BookView(
            self.ledger.cash,
            {s: p.qty for s, p in self.ledger.positions().items()},
            list(self._pending.values()),
            self._fill_ids,
            self._fills_since(),
        )
        try:
            result = await self._reconciler.run(view, self._ours, now)
        except DatabaseFaultError:
            raise  # the journal, not the broker, failed past its retries: the daemon stops
        except TemporaryError as exc:
            self._reconcile_backoff = min(max(2 * self._reconcile_backoff, 1.0), _MAX_BACKOFF)
            self._log.warning("reconcile_failed", why=why, error=str(exc), retry_in=self._reconcile_backoff)
            self.request_reconcile(why, self._reconcile_backoff)
            return False
        self._reconcile_backoff = 0.0
        record = BatchRecord(ts=now)
        await self._apply_updates(result.updates, record)
        for foreign in result.foreign:
            self._foreign(foreign, record)
        self._judge(result.mismatches, now, record)
        await self._record(record)
        for order in result.missing:
            await self._send_late(order, now)
        self._log.info(
            "reconciled",
            why=why,
            updates=len(result.updates),
            missing=len(result.missing),
            foreign=len(result.foreign),
            mismatches=[x.describe() for x in result.mismatches],
        )
        if any(o.status is OrderStatus.UNKNOWN for o in self._pending.values()):
            self.request_reconcile("unknown orders", self._settle_delay)
        return True

    async def _known_fill(self, fill: Fill) -> bool:
        """Was this fill recorded already? Memory answers for recent fills, the journal for older ones."""
        if fill.broker_fill_id in self._fill_ids:
            return True
        if not self._fill_ids.forgotten(fill):
            return False
        ids = {fill.broker_fill_id}
        return bool(await self._database_call("known_fills", lambda: self._journal.known_fills(ids)))

    def _forget_old_fills(self) -> None:
        """Keep in memory only the fills a broker may still report again (memory stays flat for months)."""
        since = self._fills_since()
        if since is not None:
            self._fill_ids.forget_before(since - FILL_MEMORY)

    def _fills_since(self) -> datetime | None:
        """Where to look for executions: the last fill recorded, or the oldest open order's bar."""
        candidates = [o.intent.bar_ts for o in self._pending.values()]
        if self._last_fill_ts is not None:
            candidates.append(self._last_fill_ts)
        return min(candidates, default=None)

    def _judge(self, mismatches: Sequence[Mismatch], now: datetime, record: BatchRecord) -> None:
        """Alert and halt on a new set of mismatches (the strategy owning a position, every strategy for
        cash); lift reconciliation halts once nothing differs. An operator's resume over an unchanged set
        stands until the set changes."""
        found = frozenset(x.describe() for x in mismatches)
        if found == self._mismatches:
            return
        self._mismatches = found
        if found:
            record.alerts.append(
                Alert(
                    now,
                    Severity.CRITICAL,
                    AlertKind.RECONCILIATION,
                    "ledger and broker disagree: " + "; ".join(sorted(found)),
                    details={"mismatches": sorted(found)},
                )
            )
        owners = {self._owner[x.symbol].name for x in mismatches if x.symbol in self._owner}
        every = any(x.symbol not in self._owner for x in mismatches)
        for rt in self._runtimes:
            problem = None
            if every or rt.name in owners:
                problem = "; ".join(
                    sorted(x.describe() for x in mismatches if x.symbol in (*rt.config.symbols, None))
                )
                problem = problem or "; ".join(sorted(found))
            change = rt.tracker.reconciled(problem, now)
            if change is not None:
                self._state_changed(change, record)
                record.trackers.append(rt.tracker)

    async def _send_late(self, order: OpenOrder, now: datetime) -> None:
        """An order the broker never received: sent now while its bar is fresh (the client order id makes a
        repeat harmless at the broker), else expired with the reason."""
        intent = order.intent
        rt = self._owner[intent.symbol]
        limit = rt.config.risk.max_bar_age_seconds or rt.config.bar_interval.total_seconds()
        age = (now - (intent.bar_ts + rt.config.bar_interval)).total_seconds()
        if age <= limit:
            await self._submit(intent)
            return
        reason = f"never reached the broker; its bar closed {age:.0f} s ago (limit {limit:.0f} s)"
        await self._record_order(
            BrokerOrder(intent.client_order_id, None, OrderStatus.EXPIRED, reason=reason)
        )
        self._log.warning("order_expired", client_order_id=intent.client_order_id, reason=reason)

    # ---- the journal ----------------------------------------------------------------------------

    async def _record(self, record: BatchRecord) -> None:
        """One batch's transaction, redone whole from the same record after a temporary database fault;
        the loop stays free (signals, watchdog) while it waits. Nothing is sent before it is recorded."""
        await self._database_write("record_batch", lambda: self._journal.record_batch(record))

    async def _record_alerts(self, alerts: Sequence[Alert]) -> None:
        await self._database_write("record_alerts", lambda: self._journal.record_alerts(alerts))

    async def _database_write(self, what: str, write: Callable[[], None]) -> None:
        if self._database is None:
            write()
        else:
            await self._database.write_once(what, write, self._stop)

    async def _database_call(self, what: str, read: Callable[[], T]) -> T:
        """A journal read, redone after a temporary database fault."""
        if self._database is None:
            return read()
        return await self._database.call(what, read, self._stop)

    # ---- one batch ------------------------------------------------------------------------------

    async def process_batch(self, instant: Instant) -> None:
        """Every stage, for the bars that closed at one instant."""
        now = instant.close
        record = BatchRecord(ts=now)
        accepted = self._guarded(instant.bars, now, record)
        record.bars = accepted
        record.timeframes = {b.symbol: self._owner[b.symbol].config.timeframe for b in accepted}

        await self._sync_operator()
        self._broker.observe_bars(accepted)
        await self._handle_events(self._broker.events.drain(), record)
        contexts = self._advance(accepted, instant.arrived)
        equity = self.equity_point(now).equity
        for rt in self._runtimes:
            for change in rt.tracker.update(equity, now):
                self._state_changed(change, record)
            record.trackers.append(rt.tracker)
        record.equity = self.equity_point(now)

        intents: list[OrderIntent] = []
        # Positions and marks stand still from here on; only this batch's own orders move the totals.
        totals = ExposureTotals.of(self.ledger.quantities, self._pending_qty(), self.marks)
        for rt in self._runtimes:
            own = [b for b in accepted if self._owner[b.symbol] is rt]  # not `in symbols`: a list
            if own:
                current = [b for b in own if b.close_time == now]  # a released bar's instant is past
                intents.extend(self._flatten(rt, current, equity, record, contexts, totals=totals))
                intents.extend(self._decide(rt, own, equity, record, contexts, totals=totals))

        self._decisions.flush()  # the decisions are told before they are recorded, as they are taken
        await self._record(record)
        # Every intent is durable now. Their answers are recorded together, in one transaction after the
        # last submit: a crash before it leaves intents without answers, which reconciliation settles.
        answers = BatchRecord(ts=self.market_now())
        for intent in intents:
            await self._submit(intent, answers)
        if answers.updates or answers.alerts:
            await self._record(answers)
        self.stats.batches += 1
        self.stats.bars += len(accepted)
        self._forget_old_fills()

    def _guarded(self, bars: Sequence[Bar], now: datetime, record: BatchRecord) -> list[Bar]:
        """The bars the guard accepts, in time order (a bar held for confirmation comes before this
        instant's); its rejections, gaps and confirmed jumps go into the record."""
        accepted: list[Bar] = []
        for bar in bars:
            verdict = self._guard.take(bar)
            accepted.extend(b for b in verdict.accepted if b.symbol in self._owner)
            record.alerts.extend(self._rejected(r, now) for r in verdict.rejected)
            for gap in verdict.gaps:
                days = gap.length.total_seconds() / 86_400
                message = f"no bar for {days:.1f} days before this one (since {gap.previous.isoformat()})"
                details = {"days": round(days, 3)}
                record.alerts.append(self._bar_alert(gap.bar, AlertKind.DATA_GAP, message, now, details))
            if verdict.jump is not None:
                self._jumped(verdict.jump, now, record)
        return accepted

    def _pending_qty(self) -> dict[str, Decimal]:
        """What open orders still add to each position: only their unfilled rest."""
        pending: dict[str, Decimal] = {}
        for order in self._pending.values():
            intent = order.intent
            pending[intent.symbol] = (
                pending.get(intent.symbol, Decimal(0)) + intent.side.sign * order.remaining
            )
        return pending

    def _interval_of(self, symbol: str) -> timedelta:
        rt = self._owner.get(symbol)
        return rt.config.bar_interval if rt is not None else timedelta(0)

    # ---- risk path ------------------------------------------------------------------------------

    def _owner_interval(self, strategy: str) -> timedelta:
        return next(rt.config.bar_interval for rt in self._runtimes if rt.name == strategy)

    async def _sync_operator(self) -> None:
        """Apply `paperbot halt`/`resume` recorded since the last batch (the CLI writes the event row; the
        daemon only follows it, so nothing is recorded twice). A resume re-bases at the current equity.

        At most once per operator_poll_seconds: a query per batch would cost a replay a tenth of its time."""
        now = time.monotonic()
        if now < self._next_operator_poll:
            return
        self._next_operator_poll = now + self._config.operator_poll_seconds
        after = min((rt.tracker.event_id for rt in self._runtimes), default=0)
        by_name = {rt.name: rt for rt in self._runtimes}
        events = await self._database_call("operator_events", lambda: self._journal.operator_events(after))
        for event in events:
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

    def _advance(self, bars: Sequence[Bar], arrived: datetime) -> dict[str, BarContext]:
        """Move marks and last times to these bars, in order; return what the stale-data and price-band
        guards compare each symbol's latest bar with (the bar before it). A bar's age is taken when its
        instant's first bar reached the engine, on the market clock: a replay's bars are never stale, a
        live bar backfilled after an outage is."""
        contexts = {}
        for bar in bars:
            contexts[bar.symbol] = BarContext(
                arrived,
                bar.close_time,
                bar.timeframe,
                self._last_ts.get(bar.symbol),
                self.marks.get(bar.symbol),
                bar.ts,
            )
            self._last_ts[bar.symbol] = bar.ts
            self.marks[bar.symbol] = stored(to_decimal(bar.close))
        return contexts

    def _jumped(self, jump: Jump, now: datetime, record: BatchRecord) -> None:
        """A jump the next bars confirmed. A split scales the books (ledger, broker, open orders) before any
        price at the new level reaches them, so nothing is marked across it; a real move is only told."""
        details: dict[str, Any] = {"bar_ts": jump.ts.isoformat(), "before": jump.before, "after": jump.after}
        if jump.split is None:
            kind = AlertKind.PRICE_JUMP
            message = f"x{jump.after / jump.before:.4g} jump from {jump.before:g}, confirmed: a real move"
        else:
            kind, ratio = AlertKind.SPLIT, jump.split
            split = Split(jump.symbol, jump.ts, ratio)
            self.ledger.split(split)
            self._broker.apply_split(split)
            for cid, order in self._pending.items():
                if order.intent.symbol == jump.symbol:
                    self._pending[cid] = order.split(ratio)
            record.splits.append(jump)
            record.positions.append(self.ledger.position(jump.symbol))
            details["ratio"] = str(ratio)
            message = (
                f"split {ratio.numerator}:{ratio.denominator} (open {jump.after:g} after a close of"
                f" {jump.before:g}): position and open orders scaled by {ratio}"
            )
        owner = self._owner.get(jump.symbol)
        self._log.warning(kind.value, symbol=jump.symbol, message=message, **details)
        record.alerts.append(
            Alert(now, Severity.WARNING, kind, message, owner.name if owner else None, jump.symbol, details)
        )

    def _view(
        self, rt: StrategyRuntime, equity: Decimal, now: datetime, totals: ExposureTotals
    ) -> PortfolioView:
        today, this_second = self._orders[rt.name].counts(now, rt.tracker.day_start)
        return PortfolioView.over(
            totals,
            equity=equity,
            cash=self.ledger.cash,
            drawdown=rt.tracker.drawdown(equity),
            state=rt.tracker.state,
            daily_loss=rt.tracker.daily_loss(equity),
            orders_today=today,
            orders_this_second=this_second,
        )

    def _send(
        self,
        rt: StrategyRuntime,
        decision: RiskDecision,
        record: BatchRecord,
        totals: ExposureTotals,
        sequence: int = 0,
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
            self._pending[intent.client_order_id] = OpenOrder(intent, OrderStatus.NEW)
            totals.add_order(intent.symbol, intent.side.sign * intent.qty)
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
        *,
        totals: ExposureTotals,
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
            view = self._view(rt, equity, context.now, totals)
            exposure = view.exposure(bar.symbol)
            if exposure == 0:
                continue
            side = Side.SELL if exposure > 0 else Side.BUY
            price = self.marks[bar.symbol]
            request = OrderRequest(rt.name, bar.symbol, bar.ts, side, abs(exposure), price, context, True)
            intent = self._send(rt, rt.risk.evaluate(request, view), record, totals, sequence=1)
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
        *,
        totals: ExposureTotals,
    ) -> list[OrderIntent]:
        """Feed the strategy's stages these bars in order; decide on those of the batch's instant (a bar
        held for confirmation is history: its instant is past)."""
        ready: list[Bar] = []
        # One pass of the feature stage for the whole batch (numpy across symbols); per bar, the rest.
        for bar, is_ready in zip(bars, rt.features.update_many(bars), strict=True):
            rt.sizer.observe_bar(bar.symbol, bar.open, bar.close)
            # This bar's open-to-close return is what the previous prediction for the symbol was about.
            realized = math.log(bar.close / bar.open)
            record.alerts.extend(rt.drift.observe_outcome(bar.symbol, bar.close_time, realized))
            rt.forecaster.observe(bar)
            record.alerts.extend(self._outlier_alerts(rt, bar))
            if bar.close_time != record.ts:
                continue
            if is_ready:
                ready.append(bar)
            else:
                self._log_decision(rt, bar)
        if not ready:
            return []
        # A view of the feature ring where it can be one: predict() reads it before the next update.
        windows = rt.features.windows([b.symbol for b in ready], copy=False)
        predicted = rt.forecaster.predict(ready, windows)
        intents = []
        horizons, version = rt.forecaster.horizons, rt.forecaster.version
        for bar, values in zip(ready, predicted.tolist(), strict=True):
            value = values[0]  # decisions are about the next bar; longer horizons are recorded beside it
            prediction = Prediction(rt.name, bar.symbol, bar.ts, value, 1, version)
            rt.drift.observe_prediction(bar.symbol, bar.close_time, value)
            target = rt.strategy.target(prediction)
            record.predictions.append((target, rt.model_version_id))
            for h, v in zip(horizons[1:], values[1:], strict=True):
                later = Prediction(rt.name, bar.symbol, bar.ts, v, h, version)
                record.predictions.append(
                    (Target(rt.name, bar.symbol, bar.ts, target.weight, later), rt.model_version_id)
                )
            rt.sizer.observe_forecast(bar.symbol, value)
            context = contexts[bar.symbol]
            view = self._view(rt, equity, context.now, totals)
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
            intent = self._send(rt, decision, record, totals)
            if intent is not None:
                intents.append(intent)
            self._log_decision(rt, bar, target, decision, intent)
        return intents

    @staticmethod
    def _outlier_alerts(rt: StrategyRuntime, bar: Bar) -> list[Alert]:
        """An alert when the feature stage flagged this very bar as a split-like jump (and rescaled)."""
        outlier = rt.features.flagged(bar)
        if outlier is None:
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
        self._decisions.info(
            "decision",
            {
                "strategy": rt.name,
                "symbol": bar.symbol,
                "bar_ts": bar.ts.isoformat(),
                "close": bar.close,
                "warming_up": target is None,
                "prediction": None if target is None else round(target.prediction.predicted_return, 8),
                "target_weight": None if target is None else round(target.weight, 4),
                "position": str(self.ledger.qty(bar.symbol)),
                "state": rt.tracker.state.value,
                "risk": None
                if decision is None
                else {
                    "outcome": decision.outcome.value,
                    "reason": decision.reason,
                    "requested": str(decision.request.qty),
                    "approved": str(decision.approved_qty),
                },
                "order": None
                if intent is None
                else {
                    "side": intent.side.value,
                    "qty": str(intent.qty),
                    "client_order_id": intent.client_order_id,
                },
            },
        )

    async def _submit(self, intent: OrderIntent, answers: BatchRecord | None = None) -> None:
        """Send one journaled intent. An unknown outcome leaves it UNKNOWN until reconciliation, asking the
        broker by client order id, settles it; it is never re-sent blindly. A broker that cannot take
        orders now (nothing sent) leaves it NEW, for the reconciliation after the broker is back. The
        answer (and its alert) goes into `answers`, for the caller to record, or else is recorded now."""
        cid = intent.client_order_id
        alerts = []
        try:
            order = await self._broker.submit(intent)
        except BrokerUnavailableError as exc:
            self._log.warning("order_deferred", client_order_id=cid, reason=str(exc))
            return
        except BrokerError as exc:
            order = BrokerOrder(cid, None, OrderStatus.UNKNOWN, reason=str(exc))
            alerts.append(
                Alert(
                    self.market_now(),
                    Severity.WARNING,
                    AlertKind.BROKER_ERROR,
                    f"submit failed, order state unknown until reconciled: {exc}",
                    intent.strategy,
                    intent.symbol,
                    {"client_order_id": cid},
                )
            )
            self.request_reconcile("unknown order", self._settle_delay)
        if answers is None:
            await self._record_order(order, alerts)
        else:
            answers.alerts.extend(alerts)
            await self._apply_updates([OrderUpdate(order, self.market_now())], answers)

    async def _record_order(self, order: BrokerOrder, alerts: Sequence[Alert] = ()) -> None:
        """An order's new state from outside the broker's events (its answer to a submit, an expiry): the
        same bookkeeping as an event, in a transaction of its own."""
        record = BatchRecord(ts=self.market_now(), alerts=list(alerts))
        await self._apply_updates([OrderUpdate(order, record.ts)], record)
        await self._record(record)

    @property
    def _settle_delay(self) -> float:
        """How soon to ask the broker again about an order whose state is unknown."""
        return self._config.reconciliation.settle_seconds or 1.0

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
