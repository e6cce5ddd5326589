"""Risk in operation, on real bars, real databases and the real CLI: a drawdown halt that survives restarts
until `paperbot resume`, halt and resume recorded as events, a running daemon following `paperbot halt`,
flattening on a breach, and `paperbot risk --format json` recomputed from the database."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO, cli_json, write_crypto_project
from sqlalchemy import select

from bot.cli import main
from bot.config import load_config
from bot.daemon import run_daemon
from bot.store import models as m
from bot.store.db import make_engine, session_factory, upgrade


def _paperbot(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", "-c", str(config), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )


def _rows(db_url: str, model: type[m.Base], *where: Any) -> list[Any]:
    engine = make_engine(db_url)
    try:
        with session_factory(engine)() as session:
            return list(
                session.scalars(select(model).where(*where).order_by(*model.__table__.primary_key.columns))
            )
    finally:
        engine.dispose()


def _run(config: Path, stop_after: int | None) -> None:
    outcome = asyncio.run(
        run_daemon(
            load_config(config),
            command="run",
            config_path=config,
            install_signals=False,
            stop_after_batches=stop_after,
        )
    )
    assert outcome.stats.stopped == (stop_after is not None)


def test_a_halt_survives_restarts_until_paperbot_resume(
    db_url: str, crypto_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_crypto_project(tmp_path, db_url, crypto_model, max_drawdown=0.004)
    upgrade(db_url)
    _run(config, 900)
    status: Any = cli_json(capsys, config, "status")
    assert status["trading_state"] == "HALTED"
    [breach] = _rows(db_url, m.TradingStateEvent)
    assert (breach.scope, breach.previous, breach.state, breach.source) == (
        "lstm-crypto",
        "ACTIVE",
        "HALTED",
        "breach",
    )
    assert breach.reason.startswith("max_drawdown:")

    _run(config, 200)  # restarted: still halted, nothing ordered
    assert cli_json(capsys, config, "status")["trading_state"] == "HALTED"  # type: ignore[index]
    assert _rows(db_url, m.Order, m.Order.bar_ts >= breach.ts) == []
    last_bar = datetime.fromisoformat(cli_json(capsys, config, "status")["last_bar"]["ETH-BTC"])  # type: ignore[index]

    done = _paperbot(config, "resume", "--reason", "checked the model")
    assert done.returncode == 0, done.stderr
    assert "HALTED -> ACTIVE (checked the model)" in done.stderr
    events = _rows(db_url, m.TradingStateEvent)
    assert [(e.previous, e.state, e.source) for e in events[:2]] == [
        ("ACTIVE", "HALTED", "breach"),
        ("HALTED", "ACTIVE", "operator"),
    ]
    status = cli_json(capsys, config, "status")
    assert status["trading_state"] == "ACTIVE"
    # The resume re-based the peak at the current equity: the old loss does not halt again at once.
    [row] = _rows(db_url, m.TradingState)
    assert row.equity_peak == Decimal(status["equity"]).quantize(Decimal("1e-10"))
    alerts = [a for a in cli_json(capsys, config, "alerts") if a["kind"] == "trading_state"]  # type: ignore[union-attr]
    assert [a["details"]["source"] for a in alerts][:2] == ["breach", "operator"]

    _run(config, None)
    after = _rows(db_url, m.Order, m.Order.bar_ts > last_bar)
    assert after, "trading resumed after `paperbot resume`"


def test_halt_and_resume_commands_record_events_with_the_daemon_stopped(
    db_url: str, crypto_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_crypto_project(tmp_path, db_url, crypto_model)
    upgrade(db_url)
    assert main(["-c", str(config), "halt", "--reason", "maintenance"]) == 0
    assert main(["-c", str(config), "halt", "--reason", "still"]) == 0  # recorded again, state unchanged
    status: Any = cli_json(capsys, config, "status")
    assert (status["book"], status["trading_state"]) == ("paper", "HALTED")
    _run(config, 300)
    assert _rows(db_url, m.Order) == []
    decisions = _rows(db_url, m.RiskDecision)
    assert decisions and {d.reason for d in decisions} == {"trading_state"}
    assert main(["-c", str(config), "resume", "--strategy", "lstm-crypto"]) == 0
    events = _rows(db_url, m.TradingStateEvent)
    assert [(e.previous, e.state, e.source, e.reason) for e in events] == [
        ("ACTIVE", "HALTED", "operator", "maintenance"),
        ("HALTED", "HALTED", "operator", "still"),
        ("HALTED", "ACTIVE", "operator", "operator resume"),
    ]
    assert len([a for a in _rows(db_url, m.Alert) if a.kind == "trading_state"]) == 3
    _run(config, 300)
    assert _rows(db_url, m.Order), "orders again after the resume"
    assert main(["-c", str(config), "halt", "--strategy", "nope"]) == 2
    assert "no strategy named 'nope'" in capsys.readouterr().err


def test_a_running_daemon_follows_paperbot_halt(tmp_path: Path, crypto_model: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    config = write_crypto_project(tmp_path, db_url, crypto_model, speed=3000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "-c", str(config), "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 90
    halted = False
    states: list[str] = []
    try:
        for line in proc.stdout:
            event = json.loads(line)
            assert time.monotonic() < deadline, "the daemon did not follow the halt"
            if event.get("event") != "decision" or event["warming_up"]:
                continue
            if not halted:
                assert event["state"] == "ACTIVE"
                done = _paperbot(config, "halt", "--reason", "from another shell")
                assert done.returncode == 0, done.stderr
                halted = True
                continue
            states.append(event["state"])
            if states.count("HALTED") >= 20:
                break
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    # The daemon reads the event at its next batch; from then on every decision is HALTED.
    first = states.index("HALTED")
    assert set(states[first:]) == {"HALTED"}
    assert set(states[:first]) <= {"ACTIVE"}
    [row] = _rows(db_url, m.TradingState)
    assert (row.state, row.reason) == ("HALTED", "from another shell")


def test_flatten_on_breach_closes_every_position(
    db_url: str, crypto_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_crypto_project(tmp_path, db_url, crypto_model, max_drawdown=0.004)
    text = config.read_text().replace("lot_size = 0.01", "lot_size = 0.01\nflatten_on_breach = true")
    config.write_text(text)
    upgrade(db_url)
    _run(config, 900)
    [breach] = _rows(db_url, m.TradingStateEvent)
    status: Any = cli_json(capsys, config, "status")
    assert status["trading_state"] == "HALTED"
    assert status["positions"] == {}, "flat after the breach"
    # Decided on the bar that closed at the breach (bar_ts is its open) and after it.
    since = breach.ts - load_config(config).strategies[0].bar_interval
    closing = _rows(
        db_url, m.RiskDecision, m.RiskDecision.bar_ts >= since, m.RiskDecision.outcome != "denied"
    )
    assert closing, "the breach held a position to close"
    for decision in closing:
        checks = json.loads(decision.checks_json)
        assert checks[1]["code"] == "trading_state"
        assert "flattening" in checks[1]["detail"]
    orders = _rows(db_url, m.Order, m.Order.bar_ts >= since)
    assert {o.risk_decision_id for o in orders} == {d.id for d in closing}


def test_risk_report_is_recomputed_from_the_database(
    db_url: str, crypto_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_crypto_project(tmp_path, db_url, crypto_model)
    config.write_text(
        config.read_text().replace("lot_size = 0.01", "lot_size = 0.01\nmax_orders_per_day = 400")
    )
    upgrade(db_url)
    _run(config, 400)
    report: Any = cli_json(capsys, config, "risk")
    [strategy] = report["strategies"]
    assert strategy["name"] == "lstm-crypto"
    assert strategy["limits"]["max_drawdown"] == Decimal("0.5")
    assert strategy["limits"]["max_orders_per_day"] == 400
    assert strategy["sizing"]["mode"] == "fixed_fraction"

    # Recompute from the rows: cash and positions from fills, marks from market_state.
    book = _rows(db_url, m.Book)[0]
    fills = _rows(db_url, m.Fill)
    cash = book.starting_cash
    positions: dict[str, Decimal] = {}
    for f in fills:
        sign = 1 if f.side == "buy" else -1
        cash += -sign * f.qty * f.price - f.commission
        positions[f.symbol] = positions.get(f.symbol, Decimal(0)) + sign * f.qty
    marks = {r.symbol: r.last_close for r in _rows(db_url, m.MarketState)}
    values = {s: q * marks[s] for s, q in positions.items() if q}
    equity = cash + sum(values.values(), Decimal(0))
    assert report["equity"] == equity.quantize(Decimal("1e-10"))
    assert report["gross_exposure"] == sum((abs(v) for v in values.values()), Decimal(0))
    assert report["net_exposure"] == sum(values.values(), Decimal(0))
    for symbol, value in values.items():
        assert strategy["usage"]["positions"][symbol]["notional"] == value
    [state] = _rows(db_url, m.TradingState)
    peak = state.equity_peak
    assert strategy["usage"]["equity_peak"] == peak
    assert float(strategy["usage"]["drawdown"]) == pytest.approx(
        max(0.0, float((peak - report["equity"]) / peak))
    )
    assert strategy["usage"]["day_equity"] == state.day_equity
    day = state.day_start
    orders = _rows(db_url, m.Order)
    interval = load_config(config).strategies[0].bar_interval
    assert strategy["usage"]["orders_today"] == sum(1 for o in orders if o.bar_ts + interval >= day)
    assert 0 < strategy["usage"]["orders_today"] < len(orders)
    assert main(["-c", str(config), "risk"]) == 0
    text = capsys.readouterr().out
    assert "strategy        lstm-crypto   ACTIVE" in text
    assert "orders today" in text
