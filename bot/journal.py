"""The journal: everything the engine decides or learns, written to SQL, one transaction per bar batch.

Order intents are written (status NEW) in the same transaction as the decision that made them, BEFORE they
are sent; a restart finds them and reconciles instead of deciding again. The fills table is the ledger:
cash and positions are always recomputable from it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from bot.alerts import Alert
from bot.bars import Bar, Jump
from bot.ledger import Position, Split
from bot.orders import (
    BrokerOrder,
    Fill,
    OpenOrder,
    OrderIntent,
    OrderStatus,
    OrderUpdate,
    Side,
    money,
    split_qty,
    stored,
    to_decimal,
)
from bot.risk import (
    RiskDecision,
    SavedState,
    StateSource,
    TradingState,
    TradingStateChange,
    TradingStateTracker,
)
from bot.store import models as m
from bot.strategy import Target


@dataclass(frozen=True, slots=True)
class Decision:
    """A risk decision and, when it approved a quantity, the intent it produced."""

    decision: RiskDecision
    intent: OrderIntent | None


@dataclass(frozen=True, slots=True)
class EquityPoint:
    """Marked-to-market account value at one instant."""

    ts: datetime
    cash: Decimal
    positions_value: Decimal
    equity: Decimal
    peak: Decimal


@dataclass
class BatchRecord:
    """Everything one batch of bars (one close time) produced, written atomically. Between batches, the
    same record without bars carries what the broker reported (order updates, fills) and what followed."""

    ts: datetime
    bars: list[Bar] = field(default_factory=list)
    timeframes: dict[str, str] = field(default_factory=dict)
    updates: list[OrderUpdate] = field(default_factory=list)
    positions: list[Position] = field(default_factory=list)
    predictions: list[tuple[Target, int | None]] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    equity: EquityPoint | None = None
    trackers: list[TradingStateTracker] = field(default_factory=list)
    state_changes: list[TradingStateChange] = field(default_factory=list)
    splits: list[Jump] = field(default_factory=list)  # confirmed jumps read as splits, applied to the books


@dataclass(frozen=True, slots=True)
class OperatorEvent:
    """A `paperbot halt` or `resume` as its trading_state_events row holds it."""

    id: int
    scope: str
    state: TradingState
    reason: str
    ts: datetime


@dataclass(frozen=True)
class BookState:
    """What a restart needs: the ledger, open orders, last bars and trading states."""

    starting_cash: Decimal
    fills: list[Fill]
    open_orders: list[OpenOrder]
    last_bars: dict[str, tuple[datetime, Decimal]]
    trading_states: dict[str, SavedState]
    # (strategy, bar_ts) of the orders of the last days, so a restart keeps the day's order count.
    recent_orders: list[tuple[str, datetime]] = field(default_factory=list)
    splits: list[Split] = field(default_factory=list)


_OPEN_STATUSES = [s.value for s in OrderStatus if s.is_open]  # orders that may still fill


def saved_state(row: m.TradingState) -> SavedState:
    """The tracker state a trading_states row holds."""
    return SavedState(
        TradingState(row.state),
        row.reason,
        row.equity_peak,
        row.cause,
        row.day_start,
        row.day_equity,
        row.event_id,
    )


def tracker_row(book_id: int, tracker: TradingStateTracker) -> dict[str, Any]:
    """The trading_states row of a tracker."""
    return {
        "book_id": book_id,
        "scope": tracker.scope,
        "state": tracker.state.value,
        "reason": tracker.reason,
        "equity_peak": tracker.peak or Decimal(0),
        "cause": tracker.cause,
        "day_start": tracker.day_start,
        "day_equity": tracker.day_equity,
        "event_id": tracker.event_id,
        "updated_at": m.utcnow(),
    }


def write_state_events(session: Session, book_id: int, changes: Iterable[TradingStateChange]) -> list[int]:
    """One trading_state_events row per change; returns their ids."""
    ids = []
    for c in changes:
        row = m.TradingStateEvent(
            book_id=book_id,
            ts=c.ts,
            scope=c.scope,
            previous=c.previous.value,
            state=c.state.value,
            source=c.source.value,
            reason=c.reason,
            equity=None if c.equity is None else stored(c.equity),
        )
        session.add(row)
        session.flush()
        ids.append(row.id)
    return ids


def fill_from_row(row: m.Fill) -> Fill:
    """The domain fill of a fills row."""
    return Fill(
        row.broker_fill_id,
        row.client_order_id,
        row.symbol,
        Side(row.side),
        row.qty,
        row.price,
        row.commission,
        row.ts,
    )


def split_from_row(row: m.Split) -> Split:
    """The Split a splits row holds."""
    return Split(row.symbol, row.ts, Fraction(row.new_shares, row.old_shares))


class Journal:
    """Repository for one book. All writes of a batch happen in one transaction."""

    def __init__(self, sessions: sessionmaker[Session], book_id: int, run_id: int | None = None) -> None:
        self._sessions = sessions
        self.book_id = book_id
        self.run_id = run_id
        self._upserts: dict[tuple[str, str, tuple[str, ...]], Any] = {}

    def _upsert(self, session: Session, model: type[m.Base], rows: list[dict[str, Any]]) -> None:
        """INSERT .. ON CONFLICT (primary key) DO UPDATE on SQLite and PostgreSQL.

        Built once per table and column set: building `excluded` costs more than the write itself."""
        if not rows:
            return
        table = model.__table__
        name = session.get_bind().dialect.name
        key = (name, model.__tablename__, tuple(rows[0]))
        stmt = self._upserts.get(key)
        if stmt is None:
            insert_ = (postgresql if name == "postgresql" else sqlite).insert(table)
            keys = [c.name for c in table.primary_key]
            updates = {c: insert_.excluded[c] for c in rows[0] if c not in keys}
            stmt = self._upserts[key] = insert_.on_conflict_do_update(index_elements=keys, set_=updates)
        session.execute(stmt, rows)

    # ---- books and runs -------------------------------------------------------------------------

    @staticmethod
    def open_book(sessions: sessionmaker[Session], name: str, kind: str, starting_cash: Decimal) -> int:
        """The id of the named book, created on first use."""
        with sessions.begin() as session:
            book = session.scalar(select(m.Book).where(m.Book.name == name))
            if book is None:
                book = m.Book(name=name, kind=kind, starting_cash=money(starting_cash))
                session.add(book)
                session.flush()
            return book.id

    def start_run(self, command: str, config_sha256: str) -> int:
        """Open a runs row; later writes are tagged with it. A run of this book still open was killed or
        crashed without closing its row: it is closed as killed."""
        with self._sessions.begin() as session:
            for stale in session.scalars(
                select(m.Run).where(m.Run.book_id == self.book_id, m.Run.status == m.RunStatus.RUNNING.value)
            ):
                stale.status = m.RunStatus.KILLED.value
                stale.message = (
                    "never closed: the process was killed, crashed or lost its database (found at the next"
                    " start)"
                )
            run = m.Run(
                book_id=self.book_id,
                command=command,
                status=m.RunStatus.RUNNING.value,
                config_sha256=config_sha256,
            )
            session.add(run)
            session.flush()
            self.run_id = run.id
            return run.id

    def finish_run(self, status: m.RunStatus, bars_processed: int, message: str | None = None) -> None:
        """Close the runs row."""
        with self._sessions.begin() as session:
            run = session.get_one(m.Run, self.run_id)
            run.status, run.bars_processed, run.message = status.value, bars_processed, message
            run.ended_at = m.utcnow()

    # ---- restart --------------------------------------------------------------------------------

    def load_state(self) -> BookState:
        """Everything needed to continue exactly where the last run stopped."""
        with self._sessions() as session:
            book = session.get_one(m.Book, self.book_id)
            fills = [
                fill_from_row(r)
                for r in session.scalars(
                    select(m.Fill).where(m.Fill.book_id == self.book_id).order_by(m.Fill.id)
                )
            ]
            open_orders = []
            for row in session.scalars(
                select(m.Order)
                .where(
                    m.Order.book_id == self.book_id,
                    m.Order.status.in_(_OPEN_STATUSES),
                )
                .order_by(m.Order.id)
            ):
                intent = OrderIntent(
                    row.client_order_id,
                    row.strategy,
                    row.symbol,
                    Side(row.side),
                    row.qty,
                    row.bar_ts,
                )
                open_orders.append(
                    OpenOrder(intent, OrderStatus(row.status), row.filled_qty, row.broker_order_id)
                )
            last_bars = {
                r.symbol: (r.last_ts, r.last_close)
                for r in session.scalars(select(m.MarketState).where(m.MarketState.book_id == self.book_id))
            }
            states = {
                r.scope: saved_state(r)
                for r in session.scalars(select(m.TradingState).where(m.TradingState.book_id == self.book_id))
            }
            recent: list[tuple[str, datetime]] = []
            if last_bars:
                since = max(ts for ts, _ in last_bars.values()) - timedelta(days=3)
                recent = [
                    (strategy, bar_ts)
                    for strategy, bar_ts in session.execute(
                        select(m.Order.strategy, m.Order.bar_ts).where(
                            m.Order.book_id == self.book_id, m.Order.bar_ts >= since
                        )
                    )
                ]
            return BookState(
                book.starting_cash, fills, open_orders, last_bars, states, recent, self._splits(session)
            )

    def _splits(self, session: Session) -> list[Split]:
        return [
            split_from_row(r)
            for r in session.scalars(
                select(m.Split).where(m.Split.book_id == self.book_id).order_by(m.Split.ts, m.Split.id)
            )
        ]

    def splits(self) -> list[Split]:
        """The splits applied to this book, oldest first."""
        with self._sessions() as session:
            return self._splits(session)

    def known_orders(self, client_order_ids: Iterable[str]) -> set[str]:
        """Which of these client order ids are orders of this book."""
        return self._existing(m.Order.client_order_id, m.Order.book_id, client_order_ids)

    def known_fills(self, broker_fill_ids: Iterable[str]) -> set[str]:
        """Which of these broker fill ids are recorded fills of this book."""
        return self._existing(m.Fill.broker_fill_id, m.Fill.book_id, broker_fill_ids)

    def _existing(self, column: Any, book: Any, values: Iterable[str]) -> set[str]:
        wanted = list(values)
        if not wanted:
            return set()
        with self._sessions() as session:
            return set(session.scalars(select(column).where(book == self.book_id, column.in_(wanted))))

    def operator_events(self, after: int) -> list[OperatorEvent]:
        """Operator halts and resumes recorded after event `after` (by `paperbot halt`/`resume`)."""
        with self._sessions() as session:
            rows = session.scalars(
                select(m.TradingStateEvent)
                .where(
                    m.TradingStateEvent.book_id == self.book_id,
                    m.TradingStateEvent.id > after,
                    m.TradingStateEvent.source == StateSource.OPERATOR.value,
                )
                .order_by(m.TradingStateEvent.id)
            )
            return [OperatorEvent(r.id, r.scope, TradingState(r.state), r.reason, r.ts) for r in rows]

    # ---- the bar path ---------------------------------------------------------------------------

    def record_batch(self, batch: BatchRecord) -> None:
        """Write one batch in one transaction."""
        with self._sessions.begin() as session:
            for jump in batch.splits:  # first: the fills of this batch are at the new scale already
                self._write_split(session, jump)
            self._write_updates(session, batch.updates)
            # positions and market_state are caches of the fills and the bars, kept in the same transaction.
            self._upsert(
                session,
                m.Position,
                [
                    {
                        "book_id": self.book_id,
                        "symbol": p.symbol,
                        "qty": p.qty,
                        "avg_price": money(p.avg_price),
                    }
                    for p in batch.positions
                ],
            )
            self._upsert(
                session,
                m.MarketState,
                [
                    {
                        "book_id": self.book_id,
                        "symbol": bar.symbol,
                        "timeframe": batch.timeframes.get(bar.symbol, ""),
                        "last_ts": bar.ts,
                        "last_close": stored(to_decimal(bar.close)),
                    }
                    for bar in batch.bars
                ],
            )
            if batch.predictions:
                session.execute(
                    insert(m.Prediction),
                    [
                        {
                            "book_id": self.book_id,
                            "run_id": self.run_id,
                            "strategy": t.prediction.strategy,
                            "symbol": t.prediction.symbol,
                            "bar_ts": t.prediction.bar_ts,
                            "model_version_id": version_id,
                            "horizon": t.prediction.horizon,
                            "predicted_return": t.prediction.predicted_return,
                            "target_weight": t.weight,
                        }
                        for t, version_id in batch.predictions
                    ],
                )
            for item in batch.decisions:
                self._write_decision(session, item)
            self.write_alerts(session, batch.alerts)
            write_state_events(session, self.book_id, batch.state_changes)
            if batch.equity is not None:
                self._write_equity(session, batch.equity, m.SnapshotKind.BAR)
            self._write_trackers(session, batch.trackers)

    def _write_split(self, session: Session, jump: Jump) -> None:
        """The split's row, and its symbol's open orders scaled as the engine scaled them."""
        assert jump.split is not None
        ratio = jump.split
        session.add(
            m.Split(
                book_id=self.book_id,
                symbol=jump.symbol,
                ts=jump.ts,
                new_shares=ratio.numerator,
                old_shares=ratio.denominator,
                before_close=stored(to_decimal(jump.before)),
                after_open=stored(to_decimal(jump.after)),
            )
        )
        for row in session.scalars(
            select(m.Order).where(
                m.Order.book_id == self.book_id,
                m.Order.symbol == jump.symbol,
                m.Order.status.in_(_OPEN_STATUSES),
            )
        ):
            row.qty, row.filled_qty = split_qty(row.qty, ratio), split_qty(row.filled_qty, ratio)

    def _write_updates(self, session: Session, updates: Sequence[OrderUpdate]) -> None:
        """Each fill a row (the engine passes each broker fill id once), then the order's status."""
        for update in updates:
            order = self._order_row(session, update.client_order_id)
            fill = update.fill
            if fill is not None:
                filled = order.filled_qty + fill.qty
                avg = (
                    (order.avg_fill_price or Decimal(0)) * order.filled_qty + fill.price * fill.qty
                ) / filled
                order.filled_qty, order.avg_fill_price = filled, money(avg)
                self._move_status(
                    order, OrderStatus.FILLED if filled >= order.qty else OrderStatus.PARTIALLY_FILLED
                )
                session.add(
                    m.Fill(
                        book_id=self.book_id,
                        order_id=order.id,
                        client_order_id=fill.client_order_id,
                        strategy=order.strategy,
                        symbol=fill.symbol,
                        side=fill.side.value,
                        qty=fill.qty,
                        price=fill.price,
                        commission=fill.commission,
                        ts=fill.ts,
                        broker_fill_id=fill.broker_fill_id,
                    )
                )
            if update.order is not None:
                self._apply_order(order, update.order)

    @staticmethod
    def _order_row(session: Session, client_order_id: str) -> m.Order:
        row = session.scalar(select(m.Order).where(m.Order.client_order_id == client_order_id))
        if row is None:
            raise LookupError(f"no journaled order {client_order_id}")
        return row

    @staticmethod
    def _move_status(row: m.Order, status: OrderStatus) -> None:
        # Updates arrive out of order (a fill event before the submit's answer): never move backwards.
        if OrderStatus(row.status).may_become(status):
            row.status = status.value

    def _apply_order(self, row: m.Order, order: BrokerOrder) -> None:
        """The broker's view of the order: status (forward only), its id, and why it ended."""
        # A FILLED from the broker before its last fill is recorded would overstate the row: the fills
        # move it to FILLED themselves.
        if order.status is not OrderStatus.FILLED or row.filled_qty >= row.qty:
            self._move_status(row, order.status)
        row.broker_order_id = order.broker_order_id or row.broker_order_id
        row.reason = order.reason or row.reason

    def _write_decision(self, session: Session, item: Decision) -> None:
        d = item.decision
        row = m.RiskDecision(
            book_id=self.book_id,
            run_id=self.run_id,
            strategy=d.request.strategy,
            symbol=d.request.symbol,
            bar_ts=d.request.bar_ts,
            side=d.request.side.value,
            requested_qty=d.request.qty,
            approved_qty=d.approved_qty,
            outcome=d.outcome.value,
            reason=d.reason,
            checks_json=d.checks_json(),
        )
        session.add(row)
        session.flush()
        if item.intent is not None:
            i = item.intent
            order = m.Order(
                book_id=self.book_id,
                run_id=self.run_id,
                client_order_id=i.client_order_id,
                strategy=i.strategy,
                symbol=i.symbol,
                side=i.side.value,
                qty=i.qty,
                bar_ts=i.bar_ts,
                status=OrderStatus.NEW.value,
                risk_decision_id=row.id,
            )
            session.add(order)
            session.flush()

    def write_alerts(self, session: Session, alerts: Iterable[Alert]) -> None:
        """Alert rows in an open transaction."""
        for a in alerts:
            session.add(
                m.Alert(
                    book_id=self.book_id,
                    ts=a.ts,
                    severity=a.severity.value,
                    kind=a.kind.value,
                    strategy=a.strategy,
                    symbol=a.symbol,
                    message=a.message,
                    details_json=json.dumps(a.details, default=str) if a.details else None,
                )
            )

    def _write_equity(self, session: Session, point: EquityPoint, kind: m.SnapshotKind) -> None:
        session.add(
            m.EquitySnapshot(
                book_id=self.book_id,
                ts=point.ts,
                cash=point.cash,
                positions_value=point.positions_value,
                equity=point.equity,
                peak_equity=point.peak,
                kind=kind.value,
            )
        )

    def _write_trackers(self, session: Session, trackers: Sequence[TradingStateTracker]) -> None:
        self._upsert(session, m.TradingState, [tracker_row(self.book_id, t) for t in trackers])

    def record_alerts(self, alerts: Sequence[Alert]) -> None:
        """Alerts outside a batch (start-up, reconciliation)."""
        if alerts:
            with self._sessions.begin() as session:
                self.write_alerts(session, alerts)

    def record_equity(self, point: EquityPoint, kind: m.SnapshotKind) -> None:
        """A snapshot outside a batch (the periodic job)."""
        with self._sessions.begin() as session:
            self._write_equity(session, point, kind)
