"""The operator's side of risk: `paperbot halt`, `paperbot resume` and `paperbot risk`.

Halt and resume write what a breach writes (a trading_state_events row, an alert, the trading_states row),
so they work with the daemon stopped; a running daemon applies the event at its next batch."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from bot.alerts import Alert, AlertKind, Severity
from bot.config import StrategyConfig
from bot.journal import Journal, saved_state, write_state_events
from bot.orders import stored
from bot.reports import book_status
from bot.risk import (
    StateCause,
    StateSource,
    TradingState,
    TradingStateChange,
    TradingStateTracker,
    day_start,
)
from bot.store import models as m


@dataclass(frozen=True, slots=True)
class OperatorResult:
    """One strategy's change, with the id of its event row."""

    change: TradingStateChange
    event_id: int


def set_trading_state(
    sessions: sessionmaker[Session],
    book_id: int,
    scopes: list[str],
    state: TradingState,
    *,
    reason: str,
    now: datetime,
) -> list[OperatorResult]:
    """Halt (state HALTED) or resume (ACTIVE) the given strategies of a book, in one transaction.

    A resume re-bases the drawdown peak and the day's starting equity at the current marked equity, so
    the loss that caused a halt does not halt again at the next bar."""
    equity = stored(book_status(sessions, book_id).equity)
    journal = Journal(sessions, book_id)
    results = []
    with sessions.begin() as session:
        for scope in scopes:
            row = session.get(m.TradingState, (book_id, scope))
            if row is None:
                row = m.TradingState(book_id=book_id, scope=scope, state=TradingState.ACTIVE.value)
                row.equity_peak, row.event_id = equity, 0
                session.add(row)
            previous = TradingState(row.state)
            change = TradingStateChange(scope, previous, state, reason, now, StateSource.OPERATOR, equity)
            [event_id] = write_state_events(session, book_id, [change])
            row.state, row.reason, row.event_id = state.value, reason, event_id
            row.cause = None if state is TradingState.ACTIVE else StateCause.OPERATOR.value
            if state is TradingState.ACTIVE:
                row.equity_peak = row.day_equity = equity
            row.updated_at = m.utcnow()
            journal.write_alerts(
                session,
                [
                    Alert(
                        now,
                        Severity.WARNING if state is TradingState.ACTIVE else Severity.CRITICAL,
                        AlertKind.TRADING_STATE,
                        f"{previous} -> {state}: operator: {reason}",
                        scope,
                        None,
                        {"state": state.value, "previous": previous.value, "source": "operator"},
                    )
                ],
            )
            results.append(OperatorResult(change, event_id))
    return results


def _frac(part: Decimal, whole: Decimal) -> float:
    return float(part / whole) if whole > 0 else 0.0


def risk_report(
    sessions: sessionmaker[Session], book_id: int, strategies: list[StrategyConfig], now: datetime
) -> dict[str, Any]:
    """Limits, their usage and the state of each strategy, every number recomputed from the database:
    equity from the fills and last closes, the peak and the day's start from trading_states, the day's
    orders from the orders table."""
    status = book_status(sessions, book_id)
    equity = stored(status.equity)
    marks = status.marks
    exposures = {s: q * marks[s] for s, q in status.positions.items() if s in marks}
    gross = sum((abs(v) for v in exposures.values()), Decimal(0))
    net = sum(exposures.values(), Decimal(0))
    out: list[dict[str, Any]] = []
    with sessions() as session:
        rows = {
            r.scope: r
            for r in session.scalars(select(m.TradingState).where(m.TradingState.book_id == book_id))
        }
        for strategy in strategies:
            risk = strategy.risk
            row = rows.get(strategy.name)
            # The daemon's own arithmetic on the persisted peak and day: a tracker restored from the row.
            tracker = TradingStateTracker(strategy.name, risk)
            if row is not None:
                tracker.restore(saved_state(row))
            peak = tracker.peak if tracker.peak and tracker.peak > 0 else None
            # The day as the daemon counts it: from the last reset before the newest bar (or now).
            clock = max(status.last_bar.values(), default=now)
            start = day_start(clock, risk.daily_reset_timezone, risk.daily_reset_time)
            orders_today = sum(
                1
                for (bar_ts,) in session.execute(
                    select(m.Order.bar_ts).where(
                        m.Order.book_id == book_id,
                        m.Order.strategy == strategy.name,
                        m.Order.bar_ts >= start - strategy.bar_interval,
                    )
                )
                if bar_ts + strategy.bar_interval >= start
            )
            positions = {
                s: {
                    "qty": status.positions[s],
                    "mark": marks.get(s),
                    "notional": exposures.get(s, Decimal(0)),
                    "fraction": _frac(abs(exposures.get(s, Decimal(0))), equity),
                    "limit_fraction": risk.max_position_fraction,
                }
                for s in strategy.symbols
                if s in status.positions
            }
            out.append(
                {
                    "name": strategy.name,
                    "trading_state": row.state if row is not None else TradingState.ACTIVE.value,
                    "reason": row.reason if row is not None else None,
                    "cause": row.cause if row is not None else None,
                    "limits": risk.model_dump(mode="json", exclude={"symbols"})
                    | {
                        "symbols": {
                            s: r.model_dump(mode="json", exclude_none=True) for s, r in risk.symbols.items()
                        }
                    },
                    "sizing": strategy.sizing.model_dump(mode="json"),
                    "usage": {
                        "equity_peak": peak,
                        "drawdown": tracker.drawdown(equity),
                        "day_start": tracker.day_start,
                        "day_equity": tracker.day_equity,
                        "daily_loss": tracker.daily_loss(equity),
                        "orders_today": orders_today,
                        "positions": positions,
                    },
                }
            )
    return {
        "book": status.book,
        "equity": equity,
        "trading_state": status.trading_state,
        "gross_exposure": gross,
        "gross_exposure_fraction": _frac(gross, equity),
        "net_exposure": net,
        "net_exposure_fraction": _frac(net, equity),
        "strategies": out,
    }


def render_risk(report: dict[str, Any]) -> str:
    """The risk report as text."""
    lines = [
        f"book            {report['book']}   trading state {report['trading_state']}",
        f"equity          {report['equity']:,.2f}",
        f"gross exposure  {report['gross_exposure']:,.2f} ({report['gross_exposure_fraction']:.2%})",
        f"net exposure    {report['net_exposure']:,.2f} ({report['net_exposure_fraction']:.2%})",
    ]
    for s in report["strategies"]:
        limits, usage = s["limits"], s["usage"]
        daily = limits["daily_loss_limit"]
        lines += [
            "",
            f"strategy        {s['name']}   {s['trading_state']}"
            + (f"  ({s['reason']})" if s["reason"] else ""),
            f"drawdown        {usage['drawdown']:.2%} of limit {limits['max_drawdown']:.2%}"
            f"   (peak {usage['equity_peak'] or 0:,.2f})",
            f"daily loss      {usage['daily_loss']:.2%} of limit "
            + ("off" if daily is None else f"{daily:.2%}"),
            f"orders today    {usage['orders_today']} of {limits['max_orders_per_day'] or 'no limit'}",
            f"gross limit     {limits['max_gross_exposure']:.0%}   net limit "
            + ("off" if limits["max_net_exposure"] is None else f"{limits['max_net_exposure']:.0%}"),
            f"sizing          {s['sizing']['mode']}   on breach {limits['on_breach']}"
            + (" + flatten" if limits["flatten_on_breach"] else ""),
        ]
        for symbol, p in usage["positions"].items():
            lines.append(
                f"  {symbol:<12}  {p['qty']:f} @ {p['mark'] or 0:f}  = {p['fraction']:.2%} of equity"
                f" (limit {p['limit_fraction']:.0%})"
            )
    return "\n".join(lines)
