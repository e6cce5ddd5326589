"""What users read: trades, alerts, status and the run summary, every number recomputed from the database
(cash and positions from the fills ledger, marks from the last closes, drawdown from equity snapshots)."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from bot.journal import fill_from_row, split_from_row
from bot.ledger import Ledger
from bot.orders import money
from bot.store import models as m

_DECIMAL_TAG = "\x00dec:"


def _tag(value: Any) -> Any:
    if isinstance(value, Decimal):
        return _DECIMAL_TAG + _text(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _tag(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_tag(v) for v in value]
    return value


def dumps_exact(value: Any, indent: int | None = 2) -> str:
    """JSON where every Decimal is a number written with its exact digits (never via a binary float)."""
    text = json.dumps(_tag(value), indent=indent)
    return re.sub(r'"\\u0000dec:(-?[0-9.]+)"', r"\1", text)


def find_book(sessions: sessionmaker[Session], name: str | None, default: str) -> m.Book | None:
    """The named book; else the book of the most recent run; else the configured daemon book."""
    with sessions() as session:
        if name is None:
            latest = session.scalar(select(m.Run).order_by(m.Run.started_at.desc(), m.Run.id.desc()).limit(1))
            if latest is not None:
                return session.get(m.Book, latest.book_id)
            name = default
        return session.scalar(select(m.Book).where(m.Book.name == name))


def trades(sessions: sessionmaker[Session], book_id: int) -> list[dict[str, Any]]:
    """Fills, oldest first (newest last)."""
    with sessions() as session:
        rows = session.scalars(select(m.Fill).where(m.Fill.book_id == book_id).order_by(m.Fill.ts, m.Fill.id))
        return [
            {
                "ts": r.ts,
                "strategy": r.strategy,
                "symbol": r.symbol,
                "side": r.side,
                "qty": r.qty,
                "price": r.price,
                "commission": r.commission,
                "notional": money(r.qty * r.price),
                "client_order_id": r.client_order_id,
                "broker_fill_id": r.broker_fill_id,
            }
            for r in rows
        ]


def alerts(sessions: sessionmaker[Session], book_id: int) -> list[dict[str, Any]]:
    """Alerts, oldest first."""
    with sessions() as session:
        rows = session.scalars(select(m.Alert).where(m.Alert.book_id == book_id).order_by(m.Alert.id))
        return [
            {
                "ts": r.ts,
                "severity": r.severity,
                "kind": r.kind,
                "strategy": r.strategy,
                "symbol": r.symbol,
                "message": r.message,
                "details": json.loads(r.details_json) if r.details_json else {},
            }
            for r in rows
        ]


@dataclass(frozen=True)
class BookStatus:
    """The account of one book as the database says it is."""

    book: str
    kind: str
    starting_cash: Decimal
    cash: Decimal
    positions: dict[str, Decimal]
    marks: dict[str, Decimal]
    positions_value: Decimal
    equity: Decimal
    trading_states: dict[str, str]
    last_bar: dict[str, datetime]
    fills: int
    commissions: Decimal
    max_drawdown: float
    equity_peak: Decimal
    predictions: int
    orders: int
    alerts: int
    last_run: dict[str, Any] | None

    @property
    def trading_state(self) -> str:
        """The most restrictive state over the strategies."""
        order = ["ACTIVE", "REDUCING", "HALTED"]
        return max(self.trading_states.values(), key=order.index, default="ACTIVE")

    def to_json(self) -> dict[str, Any]:
        """The `status --format json` object."""
        total_return = (self.equity / self.starting_cash - 1) if self.starting_cash else Decimal(0)
        return {
            "book": self.book,
            "kind": self.kind,
            "starting_cash": self.starting_cash,
            "cash": self.cash,
            "equity": self.equity,
            "positions_value": self.positions_value,
            "positions": self.positions,
            "marks": self.marks,
            "trading_state": self.trading_state,
            "trading_states": self.trading_states,
            "last_bar": self.last_bar,
            "return": float(total_return),
            "max_drawdown": self.max_drawdown,
            "equity_peak": self.equity_peak,
            "fills": self.fills,
            "commissions": self.commissions,
            "predictions": self.predictions,
            "orders": self.orders,
            "alerts": self.alerts,
            "last_run": self.last_run,
        }


def _count(session: Session, table: type[m.Base], book_id: int) -> int:
    column = table.__table__.c.book_id
    return int(session.scalar(select(func.count()).where(column == book_id)) or 0)


def book_status(sessions: sessionmaker[Session], book_id: int) -> BookStatus:
    """Recompute the account from fills and last closes; drawdown from the bar equity snapshots."""
    with sessions() as session:
        book = session.get_one(m.Book, book_id)
        fill_rows = list(session.scalars(select(m.Fill).where(m.Fill.book_id == book_id).order_by(m.Fill.id)))
        splits = [
            split_from_row(r)
            for r in session.scalars(select(m.Split).where(m.Split.book_id == book_id).order_by(m.Split.ts))
        ]
        ledger = Ledger.from_fills(book.starting_cash, (fill_from_row(r) for r in fill_rows), splits)
        market = list(session.scalars(select(m.MarketState).where(m.MarketState.book_id == book_id)))
        marks = {r.symbol: r.last_close for r in market}
        positions = {s: p.qty for s, p in ledger.positions().items()}
        value = ledger.positions_value(marks)
        peak, max_dd = Decimal(0), 0.0
        for (equity,) in session.execute(
            select(m.EquitySnapshot.equity)
            .where(m.EquitySnapshot.book_id == book_id, m.EquitySnapshot.kind == m.SnapshotKind.BAR.value)
            .order_by(m.EquitySnapshot.ts, m.EquitySnapshot.id)
        ):
            peak = max(peak, equity)
            max_dd = max(max_dd, float((peak - equity) / peak)) if peak > 0 else max_dd
        states = {
            r.scope: r.state
            for r in session.scalars(select(m.TradingState).where(m.TradingState.book_id == book_id))
        }
        run = session.scalar(select(m.Run).where(m.Run.book_id == book_id).order_by(m.Run.id.desc()).limit(1))
        return BookStatus(
            book=book.name,
            kind=book.kind,
            starting_cash=book.starting_cash,
            cash=ledger.cash,
            positions=positions,
            marks={s: marks[s] for s in sorted(marks)},
            positions_value=value,
            equity=ledger.cash + value,
            trading_states=states,
            last_bar={r.symbol: r.last_ts for r in sorted(market, key=lambda r: r.symbol)},
            fills=len(fill_rows),
            commissions=sum((r.commission for r in fill_rows), Decimal(0)),
            max_drawdown=max_dd,
            equity_peak=peak,
            predictions=_count(session, m.Prediction, book_id),
            orders=_count(session, m.Order, book_id),
            alerts=_count(session, m.Alert, book_id),
            last_run=None
            if run is None
            else {
                "id": run.id,
                "command": run.command,
                "status": run.status,
                "started_at": run.started_at,
                "ended_at": run.ended_at,
                "bars_processed": run.bars_processed,
                "message": run.message,
            },
        )


def _text(value: Any, short_time: bool = False) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M") if short_time else value.isoformat()
    if short_time and isinstance(value, float):
        return f"{value:.4f}"
    if short_time and isinstance(value, list):
        return "[" + ", ".join(_text(v, short_time) for v in value) + "]"
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")  # no trailing zeros, never exponent notation
    return "" if value is None else str(value)


def render_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain aligned text table."""
    cells = [[_text(r.get(c), short_time=True) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def render_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """CSV with a header; Decimals exact, times ISO."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([_text(r.get(c)) for c in columns])
    return out.getvalue()


def render_status(status: BookStatus) -> str:
    """The one-screen summary of a book."""
    data = status.to_json()
    lines = [
        f"book            {status.book} ({status.kind})",
        f"trading state   {status.trading_state}"
        + ("" if len(status.trading_states) < 2 else f"  {status.trading_states}"),
        f"starting cash   {status.starting_cash:,.2f}",
        f"cash            {status.cash:,.2f}",
        f"positions value {status.positions_value:,.2f}",
        f"equity          {status.equity:,.2f}   return {data['return']:+.2%}",
        f"max drawdown    {status.max_drawdown:.2%}   (peak {status.equity_peak:,.2f}, bar snapshots)",
        f"fills           {status.fills}   commissions {status.commissions:,.2f}",
        f"orders          {status.orders}   predictions {status.predictions}   alerts {status.alerts}",
    ]
    if status.positions:
        lines.append(
            "positions       "
            + ", ".join(
                f"{s} {q:f} @ {status.marks.get(s, Decimal(0)):f}" for s, q in status.positions.items()
            )
        )
    if status.last_bar:
        lines.append(
            "last bar        " + ", ".join(f"{s} {ts:%Y-%m-%d %H:%M}" for s, ts in status.last_bar.items())
        )
    if status.last_run:
        r = status.last_run
        lines.append(f"last run        #{r['id']} {r['command']} {r['status']}, {r['bars_processed']} bars")
    return "\n".join(lines)
