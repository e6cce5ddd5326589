"""The engine's seams with a broker that behaves like a venue (tests/scripted_broker.py): fills arrive as
events, in parts, or only through reconciliation; answers get lost; positions change behind its back.
The whole daemon runs on real bars, a real model and a real database."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from helpers import cli_json, write_crypto_project
from scripted_broker import ScriptedBroker
from sqlalchemy import select

from bot.config import load_config
from bot.daemon import run_daemon
from bot.engine import Engine
from bot.ledger import Split
from bot.orders import Fill, OpenOrder
from bot.store import models as m
from bot.store.db import make_engine, session_factory, upgrade

Hook = Callable[[Engine, ScriptedBroker], None]


class Run:
    """The crypto project run by the daemon against a scripted broker, and its database."""

    def __init__(self, root: Path, model: Path, partials: tuple[str, ...] = ("1",)) -> None:
        self.db_url = f"sqlite:///{root / 'db.sqlite'}"
        self.config = write_crypto_project(root, self.db_url, model)
        with self.config.open("a") as handle:  # judge at once: the test knows no fill is in flight
            handle.write("\n[reconciliation]\nsettle_seconds = 0\n")
        upgrade(self.db_url)
        self.cfg = load_config(self.config)
        self.broker = ScriptedBroker(self.cfg.broker, partials)  # type: ignore[arg-type]

    def __call__(self, hook: Hook, batches: int | None = None) -> None:
        asyncio.run(
            run_daemon(
                self.cfg,
                command="run",
                config_path=self.config,
                install_signals=False,
                on_batch=lambda engine: hook(engine, self.broker),
                stop_after_batches=batches,
                broker=self.broker,
            )
        )

    def rows(self, table: Any, *where: Any) -> list[Any]:
        engine = make_engine(self.db_url)
        try:
            with session_factory(engine)() as session:
                return list(session.scalars(select(table).where(*where).order_by(table.id)))
        finally:
            engine.dispose()

    def books_match_the_broker(self, capsys: pytest.CaptureFixture[str]) -> None:
        status: Any = cli_json(capsys, self.config, "status")
        account = asyncio.run(self.broker.account())
        assert Decimal(status["cash"]) == account.cash
        assert {s: Decimal(q) for s, q in status["positions"].items()} == account.positions


def test_partial_fills_and_a_quiet_order_stream_are_recorded_once(
    crypto_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = Run(tmp_path, crypto_model, partials=("0.4", "0.6"))
    partly_filled: list[int] = []
    quiet: list[Any] = []

    def hook(engine: Engine, broker: ScriptedBroker) -> None:
        n = engine.stats.batches
        if n in (100, 170):  # the order stream goes down, fills go on unseen; then it comes back
            broker.go_quiet(n == 100, engine.market_now())
            quiet.append(engine.market_now())
        if n % 10 == 0 and run.rows(m.Order, m.Order.status == "partially_filled"):
            partly_filled.append(n)

    run(hook, batches=220)
    fills = run.rows(m.Fill)
    assert [(f.broker_fill_id, f.qty, f.price, f.commission) for f in fills] == [
        (f.broker_fill_id, f.qty, f.price, f.commission) for f in run.broker.executed
    ]
    assert any(quiet[0] <= f.ts < quiet[1] for f in fills), "the fills made while it was quiet are in"
    by_order: dict[str, list[Any]] = {}
    for fill in fills:
        by_order.setdefault(fill.client_order_id, []).append(fill)
    assert sum(len(f) == 2 and f[0].ts < f[1].ts for f in by_order.values()) > 10, "orders fill in two parts"
    assert partly_filled, "between its parts an order stays open, partially filled"
    for order in run.rows(m.Order):
        filled = sum((f.qty for f in by_order.get(order.client_order_id, [])), Decimal(0))
        assert order.filled_qty == filled
        assert order.status == ("filled" if filled == order.qty else "partially_filled" if filled else "new")
    run.books_match_the_broker(capsys)


def test_lost_answers_and_lost_orders_are_settled_by_client_order_id(
    crypto_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = Run(tmp_path, crypto_model)
    plan = {60: "lose_next_answer", 120: "lose_next_order", 180: "lose_next_order"}
    lost_at: list[int] = []

    def hook(engine: Engine, broker: ScriptedBroker) -> None:
        n = engine.stats.batches
        if n in plan:
            setattr(broker, plan[n], True)
        if len(broker.lost) > len(lost_at):
            lost_at.append(n)
        if len(lost_at) == 2 and n == lost_at[1]:
            engine.request_reconcile("test: right after the loss")  # its bar is fresh: sent again
        if len(lost_at) == 3 and n == lost_at[2] + 3:
            engine.request_reconcile("test: three bars later")  # its bar is stale: expired

    run(hook, batches=260)
    (_, answer), (_, resent), (_, stale) = run.broker.lost
    orders = {o.client_order_id: o for o in run.rows(m.Order)}
    submits = {cid: run.broker.submits.count(cid) for cid in run.broker.submits}
    assert (submits[answer], orders[answer].status) == (1, "filled")  # settled by its own fill event
    assert (submits[resent], orders[resent].status) == (2, "filled"), "sent again once the broker said so"
    assert (submits[stale], orders[stale].status) == (1, "expired")
    assert "never reached the broker" in orders[stale].reason
    assert {cid for cid, count in submits.items() if count > 1} == {resent}
    errors = run.rows(m.Alert, m.Alert.kind == "broker_error")
    assert [a.details_json for a in errors] == [
        f'{{"client_order_id": "{c}"}}' for c in (answer, resent, stale)
    ]
    assert set(run.broker._orders) == set(orders) - {stale}
    assert len(run.rows(m.Fill)) == len(run.broker.executed)
    run.books_match_the_broker(capsys)


def test_a_position_changed_behind_the_daemons_back_halts_until_reconciled(
    crypto_model: Path, tmp_path: Path
) -> None:
    run = Run(tmp_path, crypto_model)
    states: dict[int, str] = {}

    def hook(engine: Engine, broker: ScriptedBroker) -> None:
        n = engine.stats.batches
        if n in (150, 200):  # moved in, then out again
            broker.shift_position("ETH-BTC", Decimal("0.5") if n == 150 else Decimal("-0.5"))
            engine.request_reconcile("test")
        if n in (149, 175, 220):
            states[n] = engine.trading_states["lstm-crypto"].value

    run(hook, batches=240)
    assert states == {149: "ACTIVE", 175: "HALTED", 220: "ACTIVE"}
    events = run.rows(m.TradingStateEvent)
    assert [(e.state, e.source) for e in events] == [
        ("HALTED", "reconciliation"),
        ("ACTIVE", "reconciliation"),
    ]
    assert "position ETH-BTC: ledger" in events[0].reason
    critical = run.rows(m.Alert, m.Alert.kind == "reconciliation", m.Alert.severity == "critical")
    assert len(critical) == 1
    assert "ETH-BTC" in critical[0].message
    foreign = run.rows(m.Alert, m.Alert.kind == "reconciliation", m.Alert.severity == "warning")
    assert len(foreign) == 2, "each transfer is reported once"
    assert [o for o in run.rows(m.Order) if events[0].ts < o.bar_ts < events[1].ts] == []
    assert run.rows(m.RiskDecision, m.RiskDecision.reason == "trading_state"), "it wanted to, and was denied"


class InterruptedStart(ScriptedBroker):
    """Ctrl-C arrives while the daemon restores the book: after its run row is open, before any trade."""

    def restore(
        self, fills: Sequence[Fill], open_orders: Sequence[OpenOrder], splits: Sequence[Split] = ()
    ) -> None:
        super().restore(fills, open_orders, splits)
        os.kill(os.getpid(), signal.SIGINT)


def test_a_signal_during_the_start_stops_it_before_any_trade(crypto_model: Path, tmp_path: Path) -> None:
    run = Run(tmp_path, crypto_model)
    broker = InterruptedStart(run.cfg.broker)  # type: ignore[arg-type]
    outcome = asyncio.run(run_daemon(run.cfg, command="run", config_path=run.config, broker=broker))
    assert outcome.stats.stopped
    assert outcome.stats.batches == 0
    assert [r.status for r in run.rows(m.Run)] == ["stopped"]  # not failed, and the exit code is 0
    assert run.rows(m.Order) == []
