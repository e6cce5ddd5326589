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
from typing import Any, Literal

from sqlalchemy import Connection, Engine, Insert, Table, Update, bindparam, func, insert, select
from sqlalchemy import update as update_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
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
from bot.store.bulk import BulkWrite
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

# The batch's statements, built once: the bulk ones (_Bulk) are prepared once per journal (BulkWrite), the
# others' compiled forms come from the engine's statement cache.
_TABLES = m.Base.metadata.tables
_ORDERS: Table = _TABLES["orders"]
_DECISIONS: Table = _TABLES["risk_decisions"]


@dataclass(frozen=True, slots=True)
class _Bulk:
    """A bulk write of the batch: its table, the columns its rows give (tuples in this order), and what it
    is: an insert, an upsert (INSERT .. ON CONFLICT (primary key) DO UPDATE the other columns) or an
    update by id (the row's id last, as `row_id`)."""

    table: Table
    columns: tuple[str, ...]
    kind: Literal["insert", "upsert", "update"] = "insert"

    def statement(self, dialect: Dialect) -> Insert | Update:
        """The statement for `dialect` (building an upsert's `excluded` costs more than a write: the
        journal prepares each once)."""
        if self.kind == "update":
            return update_(self.table).where(self.table.c.id == bindparam("row_id"))
        if self.kind == "insert":
            return insert(self.table)
        insert_ = (postgresql if dialect.name == "postgresql" else sqlite).insert(self.table)
        keys = [c.name for c in self.table.primary_key]
        updates = {c: insert_.excluded[c] for c in self.columns if c not in keys}
        upsert: Insert = insert_.on_conflict_do_update(index_elements=keys, set_=updates)
        return upsert


def _bulk(table: Table, columns: str, kind: Literal["insert", "upsert", "update"] = "insert") -> _Bulk:
    return _Bulk(table, tuple(columns.split()), kind)


_PREDICTIONS = _bulk(
    _TABLES["predictions"],
    "book_id run_id strategy symbol bar_ts model_version_id horizon predicted_return target_weight",
)
_DECISION_ROWS = _bulk(
    _DECISIONS,
    "book_id run_id strategy symbol bar_ts side requested_qty approved_qty outcome reason checks_json",
)
_ORDER_ROWS = _bulk(
    _ORDERS, "book_id run_id client_order_id strategy symbol side qty bar_ts status risk_decision_id"
)
_FILLS = _bulk(
    _TABLES["fills"],
    "book_id order_id client_order_id strategy symbol side qty price commission ts broker_fill_id",
)
_ALERTS = _bulk(_TABLES["alerts"], "book_id ts severity kind strategy symbol message details_json")
_POSITIONS = _bulk(_TABLES["positions"], "book_id symbol qty avg_price", kind="upsert")
_MARKET_STATE = _bulk(_TABLES["market_state"], "book_id symbol timeframe last_ts last_close", kind="upsert")
_TRADING_STATES = _bulk(
    _TABLES["trading_states"],
    "book_id scope state reason equity_peak cause day_start day_equity event_id updated_at",
    kind="upsert",
)
# updated_at comes from the column's onupdate.
_ORDER_MOVES = _bulk(_ORDERS, "status filled_qty avg_fill_price broker_order_id reason row_id", "update")
_INSERT_DECISION_RETURNING = insert(_DECISIONS).returning(_DECISIONS.c.id, sort_by_parameter_order=True)
_LAST_DECISION = select(func.max(_DECISIONS.c.id))
_INSERT_EQUITY = insert(_TABLES["equity_snapshots"])
_INSERT_SPLIT = insert(_TABLES["splits"])
_INSERT_STATE_EVENT = insert(_TABLES["trading_state_events"])
_ORDER_STATE = select(
    _ORDERS.c.id,
    _ORDERS.c.client_order_id,
    _ORDERS.c.strategy,
    _ORDERS.c.qty,
    _ORDERS.c.status,
    _ORDERS.c.filled_qty,
    _ORDERS.c.avg_fill_price,
    _ORDERS.c.broker_order_id,
    _ORDERS.c.reason,
)
_ORDERS_BY_CID = _ORDER_STATE.where(_ORDERS.c.client_order_id.in_(bindparam("cids", expanding=True)))
_OPEN_ORDERS_OF = _ORDER_STATE.where(
    _ORDERS.c.book_id == bindparam("book_id"),
    _ORDERS.c.symbol == bindparam("symbol"),
    _ORDERS.c.status.in_(_OPEN_STATUSES),
).order_by(_ORDERS.c.id)
# The SET clause is the parameters' other keys; updated_at comes from the column's onupdate.
_UPDATE_ORDER = update_(_ORDERS).where(_ORDERS.c.id == bindparam("row_id"))
_IN_CHUNK = 500  # client order ids per SELECT ... IN (far below SQLite's and PostgreSQL's limits)


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
    """One trading_state_events row per change, in the session's transaction; returns their ids."""
    return insert_state_events(session.connection(), book_id, changes)


def insert_state_events(
    connection: Connection, book_id: int, changes: Iterable[TradingStateChange]
) -> list[int]:
    """One trading_state_events row per change; returns their ids (one INSERT each: they are rare)."""
    ids = []
    for c in changes:
        result = connection.execute(
            _INSERT_STATE_EVENT,
            {
                "book_id": book_id,
                "ts": c.ts,
                "scope": c.scope,
                "previous": c.previous.value,
                "state": c.state.value,
                "source": c.source.value,
                "reason": c.reason,
                "equity": None if c.equity is None else stored(c.equity),
            },
        )
        ids.append(result.inserted_primary_key[0])  # type: ignore[index]  # an INSERT always has one
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
        self._engine: Engine = sessions.kw["bind"]  # the bar path's writes need no Session
        self.book_id = book_id
        self.run_id = run_id
        self._bulk: dict[_Bulk, BulkWrite] = {}

    def _write(self, connection: Connection, bulk: _Bulk, rows: Sequence[tuple[Any, ...]]) -> None:
        """`rows` into `bulk`'s table in one executemany, prepared on first use for this database."""
        if not rows:
            return
        writer = self._bulk.get(bulk)
        if writer is None:
            dialect = connection.dialect
            writer = BulkWrite(bulk.table, bulk.statement(dialect), bulk.columns, dialect)
            self._bulk[bulk] = writer
        writer.execute(connection, rows)

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
    # A batch is one transaction of Core statements on a Connection, one executemany per table (see _Bulk):
    # no Session, no ORM unit of work, no flush per row.

    def record_batch(self, batch: BatchRecord) -> None:
        """Write one batch in one transaction. Reads nothing but `batch`, so a redo after a temporary fault
        writes the same rows."""
        with self._engine.begin() as connection:
            for jump in batch.splits:  # first: the fills of this batch are at the new scale already
                self._write_split(connection, jump)
            self._write_updates(connection, batch.updates)
            # positions and market_state are caches of the fills and the bars, kept in the same transaction.
            book, run = self.book_id, self.run_id
            self._write(
                connection,
                _POSITIONS,
                [(book, p.symbol, p.qty, money(p.avg_price)) for p in batch.positions],
            )
            timeframes = batch.timeframes
            self._write(
                connection,
                _MARKET_STATE,
                [
                    (book, bar.symbol, timeframes.get(bar.symbol, ""), bar.ts, stored(to_decimal(bar.close)))
                    for bar in batch.bars
                ],
            )
            self._write(
                connection,
                _PREDICTIONS,
                [
                    (
                        book,
                        run,
                        t.prediction.strategy,
                        t.prediction.symbol,
                        t.prediction.bar_ts,
                        version_id,
                        t.prediction.horizon,
                        t.prediction.predicted_return,
                        t.weight,
                    )
                    for t, version_id in batch.predictions
                ],
            )
            self._write_decisions(connection, batch.decisions)
            self._insert_alerts(connection, batch.alerts)
            insert_state_events(connection, self.book_id, batch.state_changes)
            if batch.equity is not None:
                self._insert_equity(connection, batch.equity, m.SnapshotKind.BAR)
            self._write_trackers(connection, batch.trackers)

    def _write_split(self, connection: Connection, jump: Jump) -> None:
        """The split's row, and its symbol's open orders scaled as the engine scaled them."""
        assert jump.split is not None
        ratio = jump.split
        connection.execute(
            _INSERT_SPLIT,
            {
                "book_id": self.book_id,
                "symbol": jump.symbol,
                "ts": jump.ts,
                "new_shares": ratio.numerator,
                "old_shares": ratio.denominator,
                "before_close": stored(to_decimal(jump.before)),
                "after_open": stored(to_decimal(jump.after)),
            },
        )
        scaled = [
            {
                "row_id": row.id,
                "qty": split_qty(row.qty, ratio),
                "filled_qty": split_qty(row.filled_qty, ratio),
            }
            for row in connection.execute(_OPEN_ORDERS_OF, {"book_id": self.book_id, "symbol": jump.symbol})
        ]
        if scaled:
            connection.execute(_UPDATE_ORDER, scaled)

    def _write_updates(self, connection: Connection, updates: Sequence[OrderUpdate]) -> None:
        """Each fill a row (the engine passes each broker fill id once), then the order's status. The orders
        are read in one SELECT, moved in memory in the updates' order, and the ones that moved written back
        in one executemany."""
        if not updates:
            return
        wanted = list(dict.fromkeys(u.client_order_id for u in updates))
        orders: dict[str, _OrderState] = {}
        for start in range(0, len(wanted), _IN_CHUNK):
            for row in connection.execute(_ORDERS_BY_CID, {"cids": wanted[start : start + _IN_CHUNK]}):
                orders[row.client_order_id] = _OrderState(
                    row.id,
                    row.strategy,
                    row.qty,
                    row.status,
                    row.filled_qty,
                    row.avg_fill_price,
                    row.broker_order_id,
                    row.reason,
                )
        fills: list[tuple[Any, ...]] = []
        for update in updates:
            order = orders.get(update.client_order_id)
            if order is None:
                raise LookupError(f"no journaled order {update.client_order_id}")
            fill = update.fill
            if fill is not None:
                order.add_fill(fill)
                fills.append(
                    (
                        self.book_id,
                        order.id,
                        fill.client_order_id,
                        order.strategy,
                        fill.symbol,
                        fill.side.value,
                        fill.qty,
                        fill.price,
                        fill.commission,
                        fill.ts,
                        fill.broker_fill_id,
                    )
                )
            if update.order is not None:
                order.apply(update.order)
        self._write(connection, _FILLS, fills)
        self._write(connection, _ORDER_MOVES, [o.update_row() for o in orders.values() if o.moved])

    def _write_decisions(self, connection: Connection, decisions: Sequence[Decision]) -> None:
        """The risk decisions, then the orders of those with an intent (status NEW), each table in one
        statement; an order refers to its decision by id."""
        if not decisions:
            return
        book, run = self.book_id, self.run_id
        rows = [
            (
                book,
                run,
                d.request.strategy,
                d.request.symbol,
                d.request.bar_ts,
                d.request.side.value,
                d.request.qty,
                d.approved_qty,
                d.outcome.value,
                d.reason,
                d.checks_json(),
            )
            for d in (item.decision for item in decisions)
        ]
        if all(item.intent is None for item in decisions):
            self._write(connection, _DECISION_ROWS, rows)
            return
        ids = self._write_returning_ids(connection, rows)
        new = OrderStatus.NEW.value
        self._write(
            connection,
            _ORDER_ROWS,
            [
                (book, run, i.client_order_id, i.strategy, i.symbol, i.side.value, i.qty, i.bar_ts, new, id_)
                for id_, i in zip(ids, (item.intent for item in decisions), strict=True)
                if i is not None
            ],
        )

    def _write_returning_ids(self, connection: Connection, rows: list[tuple[Any, ...]]) -> list[int]:
        """Insert risk_decisions rows; their ids, in the rows' order."""
        if connection.dialect.name == "sqlite":
            # SQLAlchemy gets ordered RETURNING from SQLite only one INSERT per row. Instead: SQLite has one
            # writer at a time, this transaction holds the write lock from its first row on, and a new row's
            # id is the largest id + 1 (sqlite.org/autoinc.html): the rows hold the last len(rows) ids, in
            # order.
            self._write(connection, _DECISION_ROWS, rows)
            last = connection.execute(_LAST_DECISION).scalar_one()
            return list(range(last - len(rows) + 1, last + 1))
        params = [dict(zip(_DECISION_ROWS.columns, r, strict=True)) for r in rows]
        return list(connection.execute(_INSERT_DECISION_RETURNING, params).scalars())

    def write_alerts(self, session: Session, alerts: Iterable[Alert]) -> None:
        """Alert rows in an open transaction."""
        self._insert_alerts(session.connection(), alerts)

    def _insert_alerts(self, connection: Connection, alerts: Iterable[Alert]) -> None:
        rows = [
            (
                self.book_id,
                a.ts,
                a.severity.value,
                a.kind.value,
                a.strategy,
                a.symbol,
                a.message,
                json.dumps(a.details, default=str) if a.details else None,
            )
            for a in alerts
        ]
        self._write(connection, _ALERTS, rows)

    def _insert_equity(self, connection: Connection, point: EquityPoint, kind: m.SnapshotKind) -> None:
        connection.execute(
            _INSERT_EQUITY,
            {
                "book_id": self.book_id,
                "ts": point.ts,
                "cash": point.cash,
                "positions_value": point.positions_value,
                "equity": point.equity,
                "peak_equity": point.peak,
                "kind": kind.value,
            },
        )

    def _write_trackers(self, connection: Connection, trackers: Sequence[TradingStateTracker]) -> None:
        rows = [tracker_row(self.book_id, t) for t in trackers]
        self._write(connection, _TRADING_STATES, [tuple(r[c] for c in _TRADING_STATES.columns) for r in rows])

    def record_alerts(self, alerts: Sequence[Alert]) -> None:
        """Alerts outside a batch (start-up, reconciliation)."""
        if alerts:
            with self._engine.begin() as connection:
                self._insert_alerts(connection, alerts)

    def record_equity(self, point: EquityPoint, kind: m.SnapshotKind) -> None:
        """A snapshot outside a batch (the periodic job)."""
        with self._engine.begin() as connection:
            self._insert_equity(connection, point, kind)


@dataclass(slots=True)
class _OrderState:
    """What order updates read and move of one orders row, kept in memory for one batch: the same
    arithmetic and forward-only rules the row would go through, then written back once if it moved."""

    id: int
    strategy: str
    qty: Decimal
    status: str
    filled_qty: Decimal
    avg_fill_price: Decimal | None
    broker_order_id: str | None
    reason: str | None
    loaded: tuple[object, ...] = ()

    def __post_init__(self) -> None:
        self.loaded = self._moving()

    def _moving(self) -> tuple[object, ...]:
        return (self.status, self.filled_qty, self.avg_fill_price, self.broker_order_id, self.reason)

    @property
    def moved(self) -> bool:
        """Whether anything differs from the row as read (an unchanged row is not written)."""
        return self._moving() != self.loaded

    def update_row(self) -> tuple[Any, ...]:
        """The row of `_ORDER_MOVES` that writes this state back."""
        return (self.status, self.filled_qty, self.avg_fill_price, self.broker_order_id, self.reason, self.id)

    def add_fill(self, fill: Fill) -> None:
        """A fill: quantity and average price, and the status the fills imply."""
        filled = self.filled_qty + fill.qty
        avg = ((self.avg_fill_price or Decimal(0)) * self.filled_qty + fill.price * fill.qty) / filled
        self.filled_qty, self.avg_fill_price = filled, money(avg)
        self.move(OrderStatus.FILLED if filled >= self.qty else OrderStatus.PARTIALLY_FILLED)

    def move(self, status: OrderStatus) -> None:
        """The new status, unless it would move the order backwards."""
        # Updates arrive out of order (a fill event before the submit's answer): never move backwards.
        if OrderStatus(self.status).may_become(status):
            self.status = status.value

    def apply(self, order: BrokerOrder) -> None:
        """The broker's view of the order: status (forward only), its id, and why it ended."""
        # A FILLED from the broker before its last fill is recorded would overstate the row: the fills
        # move it to FILLED themselves.
        if order.status is not OrderStatus.FILLED or self.filled_qty >= self.qty:
            self.move(order.status)
        self.broker_order_id = order.broker_order_id or self.broker_order_id
        self.reason = order.reason or self.reason
