"""The journal's batch writes (issue 11: bulk Core statements, one transaction), on both backends: each order
refers to its own risk decision, order updates follow the same rules as one at a time, a failed batch
leaves nothing behind and its redo writes everything once, and bulk writes store exactly what
SQLAlchemy's own executemany stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import insert, select
from sqlalchemy.engine import Engine

from bot.alerts import Alert, AlertKind, Severity
from bot.journal import BatchRecord, Decision, Journal
from bot.orders import BrokerOrder, Fill, OrderIntent, OrderStatus, OrderUpdate, Side
from bot.risk import CheckOutcome, CheckResult, OrderRequest, RiskDecision, RiskOutcome
from bot.store import models as m
from bot.store.bulk import BulkWrite
from bot.store.db import session_factory

T0 = datetime(2024, 3, 1, 14, tzinfo=UTC)


def _journal(engine: Engine) -> Journal:
    sessions = session_factory(engine)
    journal = Journal(sessions, Journal.open_book(sessions, "paper", "daemon", Decimal(10000)))
    journal.start_run("run", "0" * 64)
    return journal


def _decision(symbol: str, qty: Decimal, approved: bool) -> Decision:
    request = OrderRequest("s", symbol, T0, Side.BUY, qty, Decimal(100))
    outcome = RiskOutcome.APPROVED if approved else RiskOutcome.DENIED
    check = CheckResult("cash", CheckOutcome.PASS if approved else CheckOutcome.DENY, qty, "detail")
    decision = RiskDecision(request, qty if approved else Decimal(0), outcome, None, (check,))
    intent = OrderIntent(f"cid-{symbol}", "s", symbol, Side.BUY, qty, T0) if approved else None
    return Decision(decision, intent)


def _fill(cid: str, fill_id: str, qty: str, price: str) -> Fill:
    return Fill(fill_id, cid, "A", Side.BUY, Decimal(qty), Decimal(price), Decimal("0.01"), T0)


def test_each_order_refers_to_its_own_decision(db_engine: Engine) -> None:
    journal = _journal(db_engine)
    approved = {"A": True, "B": False, "C": True, "D": False, "E": True}
    batches = [
        BatchRecord(
            T0, decisions=[_decision(s, Decimal(i + 1), ok) for i, (s, ok) in enumerate(approved.items())]
        ),
        BatchRecord(T0, decisions=[_decision("F", Decimal(9), False)]),  # decisions without an order
        BatchRecord(T0, decisions=[_decision("G", Decimal(7), True)]),
    ]
    for batch in batches:
        journal.record_batch(batch)
    with session_factory(db_engine)() as session:
        decisions = session.execute(
            select(m.RiskDecision.id, m.RiskDecision.symbol, m.RiskDecision.requested_qty).order_by(
                m.RiskDecision.id
            )
        ).all()
        orders = session.execute(
            select(m.Order.symbol, m.Order.qty, m.Order.status, m.Order.risk_decision_id).order_by(m.Order.id)
        ).all()
    assert [symbol for _, symbol, _ in decisions] == ["A", "B", "C", "D", "E", "F", "G"]
    by_id = {id_: (symbol, qty) for id_, symbol, qty in decisions}
    assert [(s, q) for s, q, _, _ in orders] == [("A", 1), ("C", 3), ("E", 5), ("G", 7)]
    for symbol, qty, status, decision_id in orders:
        assert by_id[decision_id] == (symbol, qty)
        assert status == OrderStatus.NEW.value


def test_updates_of_one_batch_apply_in_order(db_engine: Engine) -> None:
    """Two fills of one order, a FILLED status before its last fill, a late NEW: as one at a time."""
    journal = _journal(db_engine)
    journal.record_batch(BatchRecord(T0, decisions=[_decision("A", Decimal(10), True)]))
    cid = "cid-A"
    ts = T0 + timedelta(hours=1)
    journal.record_batch(
        BatchRecord(
            ts,
            updates=[
                OrderUpdate(None, ts, _fill(cid, "f1", "4", "100")),
                # the broker's FILLED comes before the last fill is recorded: the row stays partial
                OrderUpdate(BrokerOrder(cid, "b-1", OrderStatus.FILLED, Decimal(10)), ts),
                OrderUpdate(None, ts, _fill(cid, "f2", "6", "101")),
                OrderUpdate(BrokerOrder(cid, None, OrderStatus.NEW), ts),  # late: never backwards
            ],
        )
    )
    with session_factory(db_engine)() as session:
        order = session.scalars(select(m.Order)).one()
        fills = session.execute(select(m.Fill.broker_fill_id, m.Fill.order_id).order_by(m.Fill.id)).all()
    assert (order.status, order.filled_qty, order.broker_order_id) == ("filled", Decimal(10), "b-1")
    assert order.avg_fill_price == Decimal("100.6")  # (4 * 100 + 6 * 101) / 10
    assert fills == [("f1", order.id), ("f2", order.id)]


def test_a_failed_batch_leaves_nothing_and_its_redo_writes_once(db_engine: Engine) -> None:
    journal = _journal(db_engine)
    alert = Alert(T0, Severity.WARNING, AlertKind.FEED_PROBLEM, "once", details={"n": Decimal("1.5")})
    bad = BatchRecord(
        T0,
        decisions=[_decision("A", Decimal(3), True)],
        alerts=[alert],
        updates=[OrderUpdate(BrokerOrder("nobody", None, OrderStatus.NEW), T0)],
    )
    with pytest.raises(LookupError):
        journal.record_batch(bad)
    with session_factory(db_engine)() as session:
        assert session.scalars(select(m.Alert)).all() == []
        assert session.scalars(select(m.RiskDecision)).all() == []
    good = BatchRecord(T0, decisions=bad.decisions, alerts=bad.alerts)
    journal.record_batch(good)
    with session_factory(db_engine)() as session:
        assert session.scalars(select(m.Alert.details_json)).all() == ['{"n": "1.5"}']
        assert len(session.scalars(select(m.Order)).all()) == 1


def test_bulk_writes_store_what_sqlalchemy_stores(db_engine: Engine) -> None:
    """The same rows through SQLAlchemy's executemany and through BulkWrite: the same stored values, the
    driver's raw text included (money is text on SQLite), defaults filled in."""
    journal = _journal(db_engine)
    table = m.Base.metadata.tables["equity_snapshots"]
    columns = ("book_id", "ts", "cash", "positions_value", "equity", "peak_equity", "kind")
    new_york = timezone(timedelta(hours=-5))  # the same instant in another zone: stored as UTC
    rows = [
        (
            journal.book_id,
            T0,
            Decimal("1.5"),
            Decimal(0),
            Decimal("-0"),
            Decimal("12345678.1234567891"),
            "bar",
        ),
        (
            journal.book_id,
            T0.astimezone(new_york),
            7,
            Decimal("2E+3"),
            Decimal("0.1"),
            Decimal(1),
            "periodic",
        ),
    ]
    writer = BulkWrite(table, insert(table), columns, db_engine.dialect)
    with db_engine.begin() as connection:
        connection.execute(insert(table), [dict(zip(columns, r, strict=True)) for r in rows])
        writer.execute(connection, rows)
        stored = connection.exec_driver_sql(
            "SELECT ts, cash, positions_value, equity, peak_equity, kind, created_at IS NOT NULL"
            " FROM equity_snapshots ORDER BY id"
        ).all()
    assert stored[:2] == stored[2:]
    assert all(r[-1] for r in stored)
