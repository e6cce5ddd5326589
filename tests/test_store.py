"""bot.store: migrations agree with the models, and values survive a round trip exactly on both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session

from bot.alerts import Severity
from bot.orders import OrderStatus, Side
from bot.store.db import (
    current_revision,
    downgrade,
    head_revisions,
    literal_heads,
    make_engine,
    schema_is_current,
    session_factory,
    upgrade,
)
from bot.store.models import (
    Alert,
    Base,
    Book,
    BookKind,
    Fill,
    Order,
    Run,
    RunCommand,
    RunStatus,
)
from bot.store.types import to_money

T0 = datetime(2024, 3, 1, 14, 30, tzinfo=UTC)
TABLES = {
    "alerts",
    "books",
    "equity_snapshots",
    "fills",
    "market_state",
    "model_versions",
    "orders",
    "positions",
    "predictions",
    "risk_decisions",
    "runs",
    "splits",
    "trading_state_events",
    "trading_states",
}


def _book_and_run(session: Session, name: str = "paper") -> tuple[Book, Run]:
    book = Book(name=name, kind=BookKind.DAEMON, starting_cash=Decimal("100000"))
    session.add(book)
    session.flush()
    run = Run(book_id=book.id, command=RunCommand.RUN, status=RunStatus.RUNNING, config_sha256="0" * 64)
    session.add(run)
    session.flush()
    return book, run


def _order(book: Book, run: Run, client_order_id: str) -> Order:
    return Order(
        book_id=book.id,
        run_id=run.id,
        client_order_id=client_order_id,
        strategy="lstm",
        symbol="AAPL",
        side=Side.BUY,
        qty=Decimal("10"),
        bar_ts=T0,
        status=OrderStatus.NEW,
    )


def _fill(book: Book, order: Order, broker_fill_id: str) -> Fill:
    return Fill(
        book_id=book.id,
        order_id=order.id,
        client_order_id=order.client_order_id,
        strategy=order.strategy,
        symbol=order.symbol,
        side=order.side,
        qty=Decimal("10"),
        price=Decimal("187.25"),
        commission=Decimal("0.35"),
        ts=T0,
        broker_fill_id=broker_fill_id,
    )


def _schema_diff(engine: Engine) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, Base.metadata))


# --- migrations -------------------------------------------------------------------------------------


def test_upgrade_to_head_matches_models(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        assert current_revision(engine) is None
        assert not schema_is_current(engine)
        upgrade(db_url)
        assert current_revision(engine) == head_revisions()[0]
        assert schema_is_current(engine)
        assert set(inspect(engine).get_table_names()) == TABLES | {"alembic_version"}
        assert _schema_diff(engine) == []
    finally:
        engine.dispose()


def test_downgrade_to_base_then_upgrade_again(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        upgrade(db_url)
        downgrade(db_url, "base")
        assert current_revision(engine) is None
        assert not schema_is_current(engine)
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(db_url)
        assert schema_is_current(engine)
        assert _schema_diff(engine) == []
    finally:
        engine.dispose()


def test_a_database_one_migration_behind_is_not_current(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        upgrade(db_url)
        downgrade(db_url, "-1")
        assert not schema_is_current(engine)
        upgrade(db_url)
        assert schema_is_current(engine)
    finally:
        engine.dispose()


def test_the_heads_read_without_alembic_are_alembics() -> None:
    assert literal_heads() == frozenset(head_revisions())


HEADER = "from collections.abc import Sequence\n\n"


def _scripts(folder: Path, **scripts: str) -> Path:
    folder.mkdir()
    for name, body in scripts.items():
        (folder / f"{name}.py").write_text(HEADER + body, encoding="utf-8")
    return folder


def test_heads_are_read_from_plain_scripts_only(tmp_path: Path) -> None:
    """Branches and merges are followed; a script that is not plain literals leaves it to Alembic."""
    plain = {
        "a": 'revision = "a"\ndown_revision = None\n',
        "b": 'revision: str = "b"\ndown_revision: str | None = "a"\n',
        "c": 'revision = "c"\ndown_revision = "a"\n',
        "__init__": "revision = compute()\n",  # skipped, as Alembic skips it
    }
    assert literal_heads(_scripts(tmp_path / "branches", **plain)) == {"b", "c"}
    merged = _scripts(tmp_path / "merged", **plain, d='revision = "d"\ndown_revision = ("b", "c")\n')
    assert literal_heads(merged) == {"d"}
    for i, odd in enumerate(
        [
            'revision = "e"\n',  # no down_revision
            'revision = "e" + "f"\ndown_revision = "a"\n',
            'revision = "e"\ndown_revision = "a"\nif True:\n    revision = "f"\n',
            'revision = "e"\ndown_revision = "a"\nrevision = "f"\n',
            'revision = "e"\ndown_revision = 7\n',
            "revision = (\n",
        ]
    ):
        assert literal_heads(_scripts(tmp_path / f"odd{i}", **plain, e=odd)) is None, odd
    assert literal_heads(_scripts(tmp_path / "empty")) is None


# --- money ------------------------------------------------------------------------------------------

EXACT_AMOUNTS = [
    Decimal("0.3"),
    Decimal("12345678901234567890.1234567890"),
    Decimal("-12345678901234567890.1234567890"),
    Decimal("-0.0000000001"),
    Decimal("-42.5"),
    Decimal("0"),
    Decimal("1E+3"),
]


def test_money_round_trips_exactly(db_engine: Engine) -> None:
    factory = session_factory(db_engine)
    with factory() as session, session.begin():
        for i, amount in enumerate(EXACT_AMOUNTS):
            session.add(Book(name=f"b{i}", kind=BookKind.BACKTEST, starting_cash=amount))
        session.add(Book(name="int", kind=BookKind.BACKTEST, starting_cash=7))
    with factory() as session:
        stored = dict(session.execute(select(Book.name, Book.starting_cash)).all())
    for i, amount in enumerate(EXACT_AMOUNTS):
        assert isinstance(stored[f"b{i}"], Decimal)
        assert stored[f"b{i}"] == amount
        # Same digits on both backends: NUMERIC(30, 10)'s scale, never a float's binary expansion.
        assert stored[f"b{i}"].as_tuple().exponent == -10
    assert stored["int"] == Decimal(7)
    with db_engine.connect() as connection:
        raw = connection.exec_driver_sql("SELECT starting_cash FROM books WHERE name = 'b0'").scalar_one()
    # SQLite holds text (a REAL column would hold the nearest binary float), PostgreSQL exact numeric.
    if db_engine.dialect.name == "sqlite":
        assert raw == "0.3000000000"
    else:
        assert raw == Decimal("0.3000000000")


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0.3, TypeError),
        (True, TypeError),
        ("0.3", TypeError),
        (Decimal("0.12345678901"), ValueError),
        (Decimal("123456789012345678901"), ValueError),
        (Decimal("NaN"), ValueError),
        (Decimal("-Infinity"), ValueError),
    ],
    ids=["float", "bool", "str", "11-fractional-digits", "21-integer-digits", "nan", "infinity"],
)
def test_to_money_refuses_inexact_values(value: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        to_money(value)


def test_to_money_accepts_zeros_beyond_the_scale() -> None:
    # Trailing zeros past 10 places do not change the number, so nothing is rounded away.
    assert to_money(Decimal("0.300000000000000")) == Decimal("0.3")
    assert str(to_money(Decimal("-0"))) == "0E-10"  # PostgreSQL has no negative zero


@pytest.mark.parametrize(
    ("value", "error"),
    [(0.3, TypeError), (Decimal("0.12345678901"), ValueError)],
    ids=["float", "11-fractional-digits"],
)
def test_money_bind_refuses_inexact(db_session: Session, value: object, error: type[Exception]) -> None:
    db_session.add(Book(name="bad", kind=BookKind.DAEMON, starting_cash=value))
    with pytest.raises(StatementError) as raised:
        db_session.flush()
    assert isinstance(raised.value.orig, error)
    db_session.rollback()
    assert db_session.scalars(select(Book)).all() == []


# --- time -------------------------------------------------------------------------------------------


def test_datetimes_come_back_aware_utc(db_engine: Engine) -> None:
    local = datetime(2024, 3, 1, 19, 30, tzinfo=timezone(timedelta(hours=5)))
    with session_factory(db_engine)() as session, session.begin():
        session.add(Alert(ts=local, severity=Severity.INFO, kind="drift", message="+05:00"))
        session.add(Alert(ts=T0, severity=Severity.INFO, kind="drift", message="utc"))
    with db_engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            # A session time zone other than UTC must not leak into the values we read back.
            connection.exec_driver_sql("SET TIME ZONE 'America/New_York'")
        values = connection.execute(select(Alert.ts).order_by(Alert.id)).scalars().all()
        raw = connection.exec_driver_sql("SELECT ts FROM alerts ORDER BY id").scalars().all()
    assert values == [T0, T0]  # 19:30+05:00 is 14:30 UTC
    assert all(value.tzinfo is UTC for value in values)
    # Stored as the UTC instant: SQLite text holds UTC wall time, PostgreSQL an absolute instant.
    if db_engine.dialect.name == "sqlite":
        assert raw == ["2024-03-01 14:30:00.000000"] * 2
    else:
        assert [value.astimezone(UTC) for value in raw] == [T0, T0]


def test_naive_datetime_is_refused(db_session: Session) -> None:
    db_session.add(Alert(ts=datetime(2024, 3, 1, 14, 30), severity=Severity.INFO, kind="x", message="m"))
    with pytest.raises(StatementError) as raised:
        db_session.flush()
    assert isinstance(raised.value.orig, ValueError)


def test_defaults_and_enum_values(db_session: Session) -> None:
    book, run = _book_and_run(db_session)
    order = _order(book, run, "coid-1")
    db_session.add(order)
    db_session.commit()
    assert order.filled_qty == Decimal(0)
    assert order.order_type == "market"
    assert order.created_at.tzinfo is UTC
    assert run.bars_processed == 0
    assert db_session.scalar(select(Order.side).where(Order.id == order.id)) == Side.BUY


# --- constraints ------------------------------------------------------------------------------------


def test_client_order_id_is_unique(db_session: Session) -> None:
    book, run = _book_and_run(db_session)
    other_book, other_run = _book_and_run(db_session, "other")
    db_session.add(_order(book, run, "coid-1"))
    db_session.flush()
    # Unique across books too: the id is what the broker deduplicates on.
    db_session.add(_order(other_book, other_run, "coid-1"))
    with pytest.raises(IntegrityError):
        db_session.flush()


def test_broker_fill_id_is_unique_per_book(db_session: Session) -> None:
    book, run = _book_and_run(db_session)
    other_book, other_run = _book_and_run(db_session, "other")
    order, other_order = _order(book, run, "coid-1"), _order(other_book, other_run, "coid-2")
    db_session.add_all([order, other_order])
    db_session.flush()
    db_session.add_all([_fill(book, order, "F1"), _fill(other_book, other_order, "F1")])
    db_session.flush()  # the same broker id in another book is fine
    db_session.add(_fill(book, order, "F1"))
    with pytest.raises(IntegrityError):
        db_session.flush()


def test_foreign_keys_are_enforced(db_session: Session) -> None:
    db_session.add(Run(book_id=999, command=RunCommand.RUN, status=RunStatus.RUNNING, config_sha256="0"))
    with pytest.raises(IntegrityError):
        db_session.flush()


# --- SQLite engine ----------------------------------------------------------------------------------


def test_sqlite_engine_uses_wal_and_foreign_keys(tmp_path: Path) -> None:
    path = tmp_path / "not" / "yet" / "there.sqlite"
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as connection:
            pragma = connection.exec_driver_sql
            assert pragma("PRAGMA journal_mode").scalar() == "wal"
            assert pragma("PRAGMA foreign_keys").scalar() == 1
            assert pragma("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert pragma("PRAGMA busy_timeout").scalar() == 5000
        assert path.exists()
    finally:
        engine.dispose()
