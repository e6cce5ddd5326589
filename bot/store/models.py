"""The schema: one mapped class per table, shared by the daemon, the backtester and Alembic.

Conventions, so every table reads the same on SQLite and PostgreSQL:
- money and quantities are `Decimal` columns (mapped to `ExactDecimal`), never floats;
- times are aware UTC `datetime` columns (mapped to `UTCDateTime`); `*_ts`/`ts` is market time, `created_at`/
  `updated_at` is wall-clock time of the write;
- closed vocabularies are plain strings holding a StrEnum's value (no database enum types, so adding a value
  needs no migration); the enums live with the stage that owns them (bot.orders, bot.risk, bot.alerts), and
  the ones below belong to the store itself;
- constraint and index names come from `NAMING_CONVENTION`, so migrations can refer to them on both backends.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import ForeignKey, Index, Integer, MetaData, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bot.store.types import ExactDecimal, UTCDateTime

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current wall-clock time as an aware UTC datetime (default for created_at/updated_at)."""
    return datetime.now(UTC)


class BookKind(StrEnum):
    """books.kind"""

    DAEMON = "daemon"
    BACKTEST = "backtest"


class RunCommand(StrEnum):
    """runs.command"""

    RUN = "run"
    BACKTEST = "backtest"


class RunStatus(StrEnum):
    """runs.status"""

    RUNNING = "running"
    COMPLETED = "completed"
    STOPPED = "stopped"
    FAILED = "failed"
    KILLED = "killed"  # found still running by the next start: killed (SIGKILL, power loss) or crashed


class ModelStatus(StrEnum):
    """model_versions.status"""

    CANDIDATE = "candidate"
    ACTIVE = "active"
    RETIRED = "retired"


class SnapshotKind(StrEnum):
    """equity_snapshots.kind"""

    BAR = "bar"
    PERIODIC = "periodic"


class Base(DeclarativeBase):
    """Declarative base: naming convention for stable constraint names, exact types for Decimal/datetime.

    The annotation map means any `Mapped[Decimal]` or `Mapped[datetime]` column gets the exact types
    without repeating them, so a new column cannot silently become a float or a naive timestamp.
    """

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        Decimal: ExactDecimal(),
        datetime: UTCDateTime(),
    }


class Book(Base):
    """A set of cash, positions and history: the daemon's paper account or one backtest."""

    __tablename__ = "books"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    starting_cash: Mapped[Decimal]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Run(Base):
    """One invocation of `paperbot run` or `paperbot backtest` against a book."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    book_id: Mapped[int] = mapped_column(ForeignKey("books.id"), index=True)
    command: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(16))
    config_sha256: Mapped[str] = mapped_column(String(64))
    bars_processed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    message: Mapped[str | None] = mapped_column(Text)


class ModelVersion(Base):
    """A trained model on disk with its card; at most one version per name should be `active`."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(
        String(16), default=ModelStatus.CANDIDATE.value, server_default=ModelStatus.CANDIDATE.value
    )
    data_sha256: Mapped[str] = mapped_column(String(64))
    trained_from: Mapped[datetime]
    trained_to: Mapped[datetime]
    card_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Prediction(Base):
    """A strategy's model output for one symbol and bar; unique so a replayed bar cannot predict twice."""

    __tablename__ = "predictions"
    # Bar time second: a batch's rows land together at the end of the index, where symbol second scattered
    # them over the whole of it (a page or more each, written back at every commit). The same uniqueness,
    # and it serves the (book_id, bar_ts) lookups the index it replaces served.
    __table_args__ = (UniqueConstraint("book_id", "bar_ts", "strategy", "symbol", "horizon"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    book_id: Mapped[int] = mapped_column(ForeignKey("books.id"))
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    strategy: Mapped[str] = mapped_column(String(64))
    symbol: Mapped[str] = mapped_column(String(32))
    bar_ts: Mapped[datetime]
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    horizon: Mapped[int] = mapped_column(Integer)
    # Model outputs are statistics, not money: binary floats are the honest type.
    predicted_return: Mapped[float]
    target_weight: Mapped[float]


class RiskDecision(Base):
    """The risk engine's verdict on one requested trade, with every check's result for the audit trail."""

    __tablename__ = "risk_decisions"
    __table_args__ = (Index(None, "book_id", "bar_ts"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    book_id: Mapped[int] = mapped_column(ForeignKey("books.id"))
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    strategy: Mapped[str] = mapped_column(String(64))
    symbol: Mapped[str] = mapped_column(String(32))
    bar_ts: Mapped[datetime]
    side: Mapped[str] = mapped_column(String(4))
    requested_qty: Mapped[Decimal]
    approved_qty: Mapped[Decimal]
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(64))
    checks_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Order(Base):
    """A paper order; `client_order_id` is globally unique so a retried submit cannot create a twin."""

    __tablename__ = "orders"
    __table_args__ = (Index(None, "book_id", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    book_id: Mapped[int] = mapped_column(ForeignKey("books.id"))
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    client_order_id: Mapped[str] = mapped_column(String(64), unique=True)
    strategy: Mapped[str] = mapped_column(String(64))
    symbol: Mapped[str] = mapped_column(String(32))
    side: Mapped[str] = mapped_column(String(4))
    qty: Mapped[Decimal]
    order_type: Mapped[str] = mapped_column(String(16), default="market", server_default="market")
    bar_ts: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(20))
    broker_order_id: Mapped[str | None] = mapped_column(String(64))
    filled_qty: Mapped[Decimal] = mapped_column(default=Decimal(0), server_default="0")
    avg_fill_price: Mapped[Decimal | None]
    risk_decision_id: Mapped[int | None] = mapped_column(ForeignKey("risk_decisions.id"))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Fill(Base):
    """One execution; unique per (book, broker_fill_id) so a fill replayed by the broker is recorded once."""

    __tablename__ = "fills"
    __table_args__ = (
        UniqueConstraint("book_id", "broker_fill_id"),
        Index(None, "book_id", "ts"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    book_id: Mapped[int] = mapped_column(ForeignKey("books.id"))
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    client_order_id: Mapped[str] = mapped_column(String(64))
    strategy: Mapped[str] = mapped_column(String(64))
    symbol: Mapped[str] = mapped_column(String(32))
    side: Mapped[str] = mapped_column(String(4))
    qty: Mapped[Decimal]
    price: Mapped[Decimal]
    commission: Mapped[Decimal]
    ts: Mapped[datetime]
    broker_fill_id: Mapped[str] = mapped_column(String(64))


class Split(Base):
    """A split seen in a symbol's prices and applied to the books: `new_shares` for every `old_shares` from
    the bar at `ts`. With the fills, it explains every position (`Ledger.from_fills`)."""

    __tablename__ = "splits"
    __table_args__ = (UniqueConstraint("book_id", "symbol", "ts"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    book_id: Mapped[int] = mapped_column(ForeignKey("books.id"))
    symbol: Mapped[str] = mapped_column(String(32))
    ts: Mapped[datetime]
    new_shares: Mapped[int] = mapped_column(Integer)
    old_shares: Mapped[int] = mapped_column(Integer)
    before_close: Mapped[Decimal]
    after_open: Mapped[Decimal]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Position(Base):
    """Current holding per symbol; `qty` is signed (negative is short)."""

    __tablename__ = "positions"

    book_id: Mapped[int] = mapped_column(ForeignKey("books.id"), primary_key=True)
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    qty: Mapped[Decimal]
    avg_price: Mapped[Decimal]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class EquitySnapshot(Base):
    """Cash, marked positions and running peak at a market time, for drawdown checks and reports."""

    __tablename__ = "equity_snapshots"
    __table_args__ = (Index(None, "book_id", "ts"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    book_id: Mapped[int] = mapped_column(ForeignKey("books.id"))
    ts: Mapped[datetime]
    cash: Mapped[Decimal]
    positions_value: Mapped[Decimal]
    equity: Mapped[Decimal]
    peak_equity: Mapped[Decimal]
    kind: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Alert(Base):
    """Something an operator should see; `book_id` is null for process-wide alerts."""

    __tablename__ = "alerts"
    __table_args__ = (Index(None, "book_id", "ts"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    book_id: Mapped[int | None] = mapped_column(ForeignKey("books.id"))
    ts: Mapped[datetime]
    severity: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(32))
    strategy: Mapped[str | None] = mapped_column(String(64))
    symbol: Mapped[str | None] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    details_json: Mapped[str | None] = mapped_column(Text)


class MarketState(Base):
    """The last bar accepted per symbol, so a restart resumes after it and rejects stale bars."""

    __tablename__ = "market_state"

    book_id: Mapped[int] = mapped_column(ForeignKey("books.id"), primary_key=True)
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    timeframe: Mapped[str] = mapped_column(String(8))
    last_ts: Mapped[datetime]
    last_close: Mapped[Decimal]


class TradingState(Base):
    """The kill-switch state per scope (the whole book, a strategy, a symbol), kept across restarts."""

    __tablename__ = "trading_states"

    book_id: Mapped[int] = mapped_column(ForeignKey("books.id"), primary_key=True)
    scope: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    equity_peak: Mapped[Decimal]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # What caused a non-ACTIVE state (max_drawdown, daily_loss, operator): the daily reset lifts only
    # daily_loss. The trading day's start and its equity, so a restart keeps the day's loss.
    cause: Mapped[str | None] = mapped_column(String(32))
    day_start: Mapped[datetime | None]
    day_equity: Mapped[Decimal | None]
    # The last operator event (trading_state_events.id) applied to this row; a newer one is still to apply.
    event_id: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class TradingStateEvent(Base):
    """A change of trading state: a breach, the operator's halt or resume, or the daily reset."""

    __tablename__ = "trading_state_events"
    __table_args__ = (Index(None, "book_id", "ts"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    book_id: Mapped[int] = mapped_column(ForeignKey("books.id"))
    ts: Mapped[datetime]
    scope: Mapped[str] = mapped_column(String(64))
    previous: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    equity: Mapped[Decimal | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
