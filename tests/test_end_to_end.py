"""The whole bar path on real bars that are not the bundled ones: train, backtest, books balance, restart."""

from __future__ import annotations

import asyncio
import csv
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import CRYPTO_DATA, REPO, cli_json, copy_data, write_crypto_project
from sqlalchemy import select

from bot.cli import main
from bot.config import load_config
from bot.daemon import run_daemon
from bot.store import models as m
from bot.store.db import make_engine, session_factory, upgrade

END = datetime(2018, 1, 27, tzinfo=UTC)  # two days of 5-minute bars after the replay start: enough to trade


def last_closes(data_dir: Path, end: datetime) -> dict[str, Decimal]:
    """Each pair's last close before `end`."""
    closes = {}
    for path in data_dir.glob("*.csv"):
        with path.open() as handle:
            rows = [r for r in csv.DictReader(handle) if datetime.fromisoformat(r["timestamp"]) < end]
        closes[path.stem] = Decimal(rows[-1]["close"])
    return closes


def test_backtest_books_balance(
    db_url: str, crypto_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_crypto_project(tmp_path, db_url, crypto_model, feed_extra=f'end = "{END.isoformat()}"')
    upgrade(db_url)
    assert main(["-c", str(config), "backtest"]) == 0

    trades: Any = cli_json(capsys, config, "trades")
    status: Any = cli_json(capsys, config, "status")
    assert len(trades) > 20, "the model should trade on two pairs over 2 days of 5m bars"
    for key in ("ts", "strategy", "symbol", "side", "qty", "price", "commission", "client_order_id"):
        assert key in trades[0]
    assert [t["ts"] for t in trades] == sorted(t["ts"] for t in trades)  # newest last

    sign = {"buy": 1, "sell": -1}
    cash = Decimal(status["starting_cash"])
    positions: dict[str, Decimal] = {}
    for t in trades:
        qty, price = Decimal(t["qty"]), Decimal(t["price"])
        cash += -sign[t["side"]] * qty * price - Decimal(t["commission"])
        positions[t["symbol"]] = positions.get(t["symbol"], Decimal(0)) + sign[t["side"]] * qty
    assert Decimal(status["cash"]) == cash
    assert {s: Decimal(q) for s, q in status["positions"].items()} == {
        s: q for s, q in positions.items() if q
    }
    closes = last_closes(CRYPTO_DATA, END)
    marked = cash + sum((q * closes[s] for s, q in positions.items()), Decimal(0))
    assert Decimal(status["equity"]) == marked
    assert status["trading_state"] == "ACTIVE"
    assert set(status["last_bar"]) == {"ETH-BTC", "LTC-BTC"}
    assert status["last_bar"]["ETH-BTC"] == "2018-01-26T23:55:00+00:00"

    # No look-ahead in execution: every fill is at the open of a bar after the decision bar.
    engine = make_engine(db_url)
    try:
        with session_factory(engine)() as session:
            for order, fill in session.execute(
                select(m.Order, m.Fill).join(m.Fill, m.Fill.order_id == m.Order.id)
            ):
                assert fill.ts > order.bar_ts
                assert order.status == "filled"
    finally:
        engine.dispose()


def _fills(db_url: str) -> list[tuple[Any, ...]]:
    engine = make_engine(db_url)
    try:
        with session_factory(engine)() as session:
            rows = session.scalars(select(m.Fill).order_by(m.Fill.ts, m.Fill.symbol))
            return [(f.ts, f.symbol, f.side, f.qty, f.price, f.commission, f.client_order_id) for f in rows]
    finally:
        engine.dispose()


def test_restart_gives_the_same_fills(crypto_model: Path, tmp_path: Path) -> None:
    """Stop twice mid-run and continue: the fills equal those of a run that was never stopped."""
    straight_url = f"sqlite:///{tmp_path / 'straight.sqlite'}"
    stopped_url = f"sqlite:///{tmp_path / 'stopped.sqlite'}"
    span = f'end = "{END.isoformat()}"'
    straight = load_config(write_crypto_project(tmp_path / "a", straight_url, crypto_model, feed_extra=span))
    stopped_path = write_crypto_project(tmp_path / "b", stopped_url, crypto_model, feed_extra=span)
    stopped = load_config(stopped_path)

    outcome = asyncio.run(
        run_daemon(straight, command="run", config_path=tmp_path / "a", install_signals=False)
    )
    assert not outcome.stats.stopped
    for stop_after in (150, 400, None):
        outcome = asyncio.run(
            run_daemon(
                stopped,
                command="run",
                config_path=stopped_path,
                install_signals=False,
                stop_after_batches=stop_after,
            )
        )
        assert outcome.stats.stopped == (stop_after is not None)

    expected, got = _fills(straight_url), _fills(stopped_url)
    assert len(expected) > 20
    assert got == expected


def test_malformed_bars_are_rejected_and_alerted(
    crypto_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = copy_data(tmp_path / "data")
    path = data / "ETH-BTC.csv"
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("2018-01-26T12:00"))
    bad = {
        start: lines[start].split(",")[0] + ",nan,0.1,0.09,0.095,10",
        start + 1: lines[start + 1].split(",")[0] + ",0.095,0.09,0.1,0.095,10",  # high < low
        start + 2: lines[start + 2].split(",")[0] + ",-1,0.1,0.09,0.095,10",
    }
    for index, line in bad.items():
        lines[index] = line
    lines.insert(start + 4, lines[start + 3])  # duplicate timestamp
    lines.insert(start + 6, lines[start - 10])  # out of order
    lines.insert(start + 8, "not-a-time,1,1,1,1,1")
    lines.insert(start + 20, "2099-01-26T12:00:00Z,0.095,0.096,0.094,0.095,10")  # a typo in the year
    path.write_text("\n".join(lines) + "\n")

    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    config = write_crypto_project(tmp_path, db_url, crypto_model, data_dir=data)
    assert main(["-c", str(config), "backtest"]) == 0
    alerts: Any = cli_json(capsys, config, "alerts")
    reasons = sorted(
        a["details"].get("reason", a["kind"])
        for a in alerts
        if a["symbol"] == "ETH-BTC" and a["kind"] in ("bar_rejected", "feed_problem", "late_bar")
    )
    assert reasons == [
        "duplicate_timestamp",
        "feed_problem",
        "feed_problem",  # 2099: never read, so it neither reorders the replay nor becomes the last bar
        "high_below_low",
        "late_bar",  # the row out of order closes at an instant already decided
        "non_positive_price",
        "not_finite",
    ]
    status: Any = cli_json(capsys, config, "status")
    assert status["last_bar"]["ETH-BTC"].startswith("2018-01-30")  # every real bar after 2099's was used
    (late,) = [a for a in alerts if a["kind"] == "late_bar"]
    assert late["details"]["bar_ts"] == lines[start - 10].split(",")[0].replace("Z", "+00:00")
    assert late["details"]["close"] == Decimal(lines[start - 10].split(",")[4])
    engine = make_engine(db_url)
    try:
        with session_factory(engine)() as session:
            damaged = [
                datetime.fromisoformat(a["details"]["bar_ts"])
                for a in alerts
                if a["details"].get("reason") in ("not_finite", "high_below_low", "non_positive_price")
            ]
            assert len(damaged) == 3
            for table in (m.Prediction, m.Order):  # nothing was predicted or ordered on a damaged bar
                rows = session.scalars(
                    select(table).where(table.symbol == "ETH-BTC", table.bar_ts.in_(damaged))
                )
                assert list(rows) == []
            assert session.scalar(select(m.Prediction).where(m.Prediction.symbol == "ETH-BTC")) is not None
    finally:
        engine.dispose()


def test_drawdown_halt_on_marked_equity_survives_a_restart(
    db_url: str, crypto_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tight limit halts at the first bar whose marked-to-market drawdown crosses it (recomputed here from
    the equity snapshots); nothing is ordered after it, and a restarted daemon stays halted."""
    limit = 0.004
    config = write_crypto_project(tmp_path, db_url, crypto_model, max_drawdown=limit)
    upgrade(db_url)
    cfg = load_config(config)
    outcome = asyncio.run(
        run_daemon(cfg, command="run", config_path=config, install_signals=False, stop_after_batches=900)
    )
    assert outcome.stats.stopped
    status: Any = cli_json(capsys, config, "status")
    assert status["trading_state"] == "HALTED"

    engine = make_engine(db_url)
    try:
        with session_factory(engine)() as session:
            snapshots = session.scalars(
                select(m.EquitySnapshot).where(m.EquitySnapshot.kind == "bar").order_by(m.EquitySnapshot.ts)
            ).all()
            peak, breach = Decimal(0), None
            for snap in snapshots:
                assert snap.equity == snap.cash + snap.positions_value
                peak = max(peak, snap.equity)
                if (peak - snap.equity) / peak >= Decimal(str(limit)):
                    breach = snap.ts
                    break
            assert breach is not None
            halt = session.scalars(select(m.Alert).where(m.Alert.kind == "trading_state")).one()
            assert halt.ts == breach
            assert "HALTED" in halt.message
            assert session.scalars(select(m.Order).where(m.Order.bar_ts >= breach)).all() == []
            decisions = session.scalars(select(m.RiskDecision).where(m.RiskDecision.bar_ts >= breach)).all()
            assert decisions and all(d.outcome == "denied" and d.reason == "trading_state" for d in decisions)
    finally:
        engine.dispose()

    asyncio.run(run_daemon(cfg, command="run", config_path=config, install_signals=False))
    status = cli_json(capsys, config, "status")
    assert status["trading_state"] == "HALTED"
    assert status["last_run"]["status"] == "completed"
    assert status["last_bar"]["ETH-BTC"].startswith("2018-01-30")


def test_a_split_is_flagged_and_does_not_poison_the_features(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """AAPL's unadjusted 4:1 split of 2020-08-31, with outlier handling on: one alert, on that bar."""
    config = tmp_path / "config.toml"
    config.write_text(f"""
[daemon]
database_url = "sqlite:///{tmp_path / "db.sqlite"}"
[feed]
kind = "replay"
data_dir = "{REPO / "data" / "equities-1h"}"
start = "2020-08-03T00:00:00Z"
end = "2020-09-15T00:00:00Z"
[[strategies]]
name = "aapl"
symbols = ["AAPL"]
model_dir = "{tmp_path / "models" / "aapl"}"
[strategies.features]
outlier_k = 10
[strategies.model]
window = 8
hidden = 8
layers = 1
[strategies.training]
start = "2019-06-01T00:00:00Z"
epochs = 1
batch_size = 64
""")
    assert main(["-c", str(config), "train"]) == 0
    assert main(["-c", str(config), "backtest"]) == 0
    alerts: Any = cli_json(capsys, config, "alerts")
    outliers = [a for a in alerts if a["kind"] == "outlier_bar"]
    assert [(a["symbol"], a["details"]["bar_ts"]) for a in outliers] == [
        ("AAPL", "2020-08-31T13:00:00+00:00")
    ]
    assert float(outliers[0]["details"]["ratio"]) == pytest.approx(127.67 / 499.23)


def test_streaming_inference_and_every_horizon_in_the_predictions_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A two-horizon model traded with inference = "streaming": each decision bar records both horizons,
    and the next-bar forecasts follow the window path's (the stream restarts from the window, then steps)."""
    model_dir = tmp_path / "models" / "lstm-crypto"
    predictions: dict[str, list[Any]] = {}
    for inference in ("window", "streaming"):
        root = tmp_path / inference
        db = root / "db.sqlite"
        extra = f'horizons = [1, 3]\ninference = "{inference}"'
        config = write_crypto_project(root, f"sqlite:///{db}", model_dir, model_extra=extra)
        if inference == "window":
            assert main(["-c", str(config), "train"]) == 0
        assert main(["-c", str(config), "backtest", "--end", "2018-01-27T00:00:00Z"]) == 0
        engine = make_engine(f"sqlite:///{db}")
        try:
            with session_factory(engine)() as session:
                predictions[inference] = list(
                    session.execute(
                        select(m.Prediction.symbol, m.Prediction.bar_ts, m.Prediction.horizon,
                               m.Prediction.predicted_return)
                        .order_by(m.Prediction.symbol, m.Prediction.bar_ts, m.Prediction.horizon)
                    ).all()
                )  # fmt: skip
        finally:
            engine.dispose()
    window, stream = predictions["window"], predictions["streaming"]
    assert [r[:3] for r in window] == [r[:3] for r in stream]
    assert {r.horizon for r in window} == {1, 3}
    assert sum(r.horizon == 1 for r in window) == sum(r.horizon == 3 for r in window) > 400
    next_bar = [
        (w.predicted_return, s.predicted_return)
        for w, s in zip(window, stream, strict=True)
        if w.horizon == 1
    ]
    first = {
        w.symbol: (w.predicted_return, s.predicted_return)
        for w, s in reversed(list(zip(window, stream, strict=True)))
    }
    for by_window, by_stream in first.values():  # the first decision of each symbol: the window itself
        assert by_stream == pytest.approx(by_window, rel=1e-5, abs=1e-12)
    a = np.array(next_bar)
    assert np.corrcoef(a[:, 0], a[:, 1])[0, 1] > 0.99
    assert not np.array_equal(a[:, 0], a[:, 1])  # the stream did carry state past the window


def test_the_bundled_backtest_fills_exactly_as_before_the_seams(tmp_path: Path) -> None:
    """The bundled config, backtested over 2016-01..04, fills the same orders at the same prices and
    commissions as main did before feeds and brokers became pluggable (fills recorded then in tests/data)."""
    config = tmp_path / "config.toml"
    text = (REPO / "config.toml").read_text(encoding="utf-8")
    text = text.replace("sqlite:///var/paperbot.sqlite", f"sqlite:///{tmp_path / 'db.sqlite'}")
    text = text.replace('"data/equities-1h"', f'"{REPO / "data" / "equities-1h"}"')
    config.write_text(text.replace('"models/lstm-equities"', f'"{REPO / "models" / "lstm-equities"}"'))
    assert main(["-c", str(config), "backtest", "--start", "2016-01-01", "--end", "2016-05-01"]) == 0
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        with session_factory(engine)() as session:
            rows = session.scalars(select(m.Fill).order_by(m.Fill.id)).all()
    finally:
        engine.dispose()
    got = [
        [f.ts.isoformat(), f.strategy, f.symbol, f.side, str(f.qty), str(f.price), str(f.commission)]
        for f in rows
    ]
    with (REPO / "tests" / "data" / "backtest-fills-2016-01-to-04.csv").open(newline="") as handle:
        expected = list(csv.reader(handle))[1:]
    assert len(expected) == 325
    assert got == expected
