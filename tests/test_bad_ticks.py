"""Issue 10, defect 1: a bad tick is never traded, a split is confirmed and adjusted for, on real bars.

The crypto pairs are damaged in a copy (one self-consistent bar at 10x the price, one bar with high =
1e300); AAPL's unadjusted 4:1 split of 2020-08-31 is the real thing."""

from __future__ import annotations

import csv
import math
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO, cli_json, copy_data, write_crypto_project
from sqlalchemy import select

from bot.cli import main
from bot.store import models as m
from bot.store.db import make_engine, session_factory

END = "2018-01-27T00:00:00Z"


def rows_of(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def damage(path: Path, ts: str, **values: float) -> None:
    """Set some fields of the row at `ts` (a multiplier under `times`, else absolute values)."""
    rows = rows_of(path)
    row = next(r for r in rows if r["timestamp"] == ts)
    times = values.pop("times", None)
    if times is not None:
        for key in ("open", "high", "low", "close"):
            row[key] = repr(float(row[key]) * times)
    for key, value in values.items():
        row[key] = repr(value)
    write_rows(path, rows)


def db_rows(url: str, *columns: Any, order: Any = None) -> list[Any]:
    engine = make_engine(url)
    try:
        with session_factory(engine)() as session:
            return list(session.execute(select(*columns).order_by(order)).all())
    finally:
        engine.dispose()


def fills(url: str) -> list[Any]:
    return db_rows(url, m.Fill.symbol, m.Fill.ts, m.Fill.price, m.Fill.qty, order=m.Fill.id)


def signed_fills(url: str) -> list[Any]:
    return db_rows(url, m.Fill.ts, m.Fill.side, m.Fill.qty, m.Fill.price, order=m.Fill.id)


def test_a_bad_tick_is_never_filled_marked_or_forecast_on(
    crypto_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_db = f"sqlite:///{tmp_path / 'clean.sqlite'}"
    clean = write_crypto_project(tmp_path / "clean", clean_db, crypto_model, feed_extra=f'end = "{END}"')
    assert main(["-c", str(clean), "backtest"]) == 0
    before = fills(clean_db)
    # The first ETH-BTC fill after a few hours: a pending order fills at that bar's open.
    target = next(f for f in before if f.symbol == "ETH-BTC" and f.ts.hour >= 6)
    ts = target.ts.strftime("%Y-%m-%dT%H:%M:%SZ")

    data = copy_data(tmp_path / "data")
    damage(data / "ETH-BTC.csv", ts, times=10.0)
    absurd_ts = "2018-01-26T12:00:00Z"
    damage(data / "LTC-BTC.csv", absurd_ts, high=1e300)
    bad_db = f"sqlite:///{tmp_path / 'bad.sqlite'}"
    bad = write_crypto_project(
        tmp_path / "bad", bad_db, crypto_model, data_dir=data, feed_extra=f'end = "{END}"'
    )
    assert main(["-c", str(bad), "backtest"]) == 0

    after = fills(bad_db)
    eth = [f.price for f in before if f.symbol == "ETH-BTC"]
    ceiling = 2 * max(eth)
    assert all(f.price < ceiling for f in after if f.symbol == "ETH-BTC"), "a fill at the bad tick's price"
    assert not [f for f in after if f.symbol == "ETH-BTC" and f.ts == target.ts]
    # The order that would have filled at the bad bar fills at the next good bar's open instead.
    following = next(f for f in after if f.symbol == "ETH-BTC" and f.ts > target.ts)
    assert following.ts == target.ts + timedelta(minutes=5)

    alerts: Any = cli_json(capsys, bad, "alerts")
    rejected = {
        (a["symbol"], a["details"]["bar_ts"]): a["details"]["reason"]
        for a in alerts
        if a["kind"] == "bar_rejected"
    }
    assert rejected == {
        ("ETH-BTC", ts.replace("Z", "+00:00")): "unconfirmed_jump",
        ("LTC-BTC", absurd_ts.replace("Z", "+00:00")): "absurd_value",
    }
    marks = db_rows(bad_db, m.MarketState.symbol, m.MarketState.last_close, order=m.MarketState.symbol)
    assert all(close < Decimal(1) for _, close in marks)
    predicted = db_rows(bad_db, m.Prediction.predicted_return, order=m.Prediction.id)
    assert predicted and all(math.isfinite(p) and abs(p) < 1 for (p,) in predicted)


SPLIT_END = "2020-09-03T00:00:00Z"
SPLIT_CONFIG = """
[daemon]
database_url = "sqlite:///{db}"
[feed]
kind = "replay"
data_dir = "{data}"
start = "2020-08-24T00:00:00Z"
end = "{end}"
[broker]
starting_cash = "100000"
[[strategies]]
name = "aapl"
symbols = ["AAPL"]
model_dir = "{models}"
entry_threshold = 0.0
full_signal_return = 0.000001
allow_short = true
[strategies.features]
outlier_k = 10
[strategies.model]
window = 8
hidden = 8
layers = 1
[strategies.training]
start = "2020-01-01T00:00:00Z"
end = "2020-08-01T00:00:00Z"
epochs = 1
batch_size = 64
[strategies.risk]
max_drawdown = 0.2
max_position_fraction = 0.9
max_gross_exposure = 1.0
max_order_notional = 100000
"""


def test_a_confirmed_split_adjusts_the_position_and_is_never_marked_across(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """AAPL's 4:1 split with a long position held across it: the position is multiplied by 4, the equity
    does not fall by three quarters, nothing halts, and a restart's books are the same."""
    data = tmp_path / "data"
    data.mkdir()
    rows = [r for r in rows_of(REPO / "data" / "equities-1h" / "AAPL.csv") if r["timestamp"] >= "2019-10"]
    write_rows(data / "AAPL.csv", rows)
    db = tmp_path / "db.sqlite"
    config = tmp_path / "config.toml"
    models = tmp_path / "models" / "aapl"
    config.write_text(SPLIT_CONFIG.format(db=db, data=data, models=models, end=SPLIT_END))
    assert main(["-c", str(config), "train"]) == 0
    assert main(["-c", str(config), "backtest"]) == 0

    url = f"sqlite:///{db}"
    alerts: Any = cli_json(capsys, config, "alerts")
    splits = [a for a in alerts if a["kind"] == "split"]
    assert [(a["symbol"], a["details"]["bar_ts"], a["details"]["ratio"]) for a in splits] == [
        ("AAPL", "2020-08-31T13:00:00+00:00", "4")
    ]
    assert not [a for a in alerts if a["kind"] == "trading_state"], "the split must not look like a loss"
    status: Any = cli_json(capsys, config, "status")
    assert status["trading_state"] == "ACTIVE"

    split_ts = datetime.fromisoformat("2020-08-31T13:00:00+00:00")
    signed = signed_fills(url)
    held = sum((q if side == "buy" else -q for ts, side, q, _ in signed if ts < split_ts), Decimal(0))
    after = sum((q if side == "buy" else -q for ts, side, q, _ in signed if ts >= split_ts), Decimal(0))
    assert held != 0, "the test needs a position across the split"
    assert Decimal(status["positions"]["AAPL"]) == 4 * held + after
    equity = db_rows(url, m.EquitySnapshot.ts, m.EquitySnapshot.equity, order=m.EquitySnapshot.ts)
    values = [e.equity for e in equity]
    assert min(values) > Decimal("0.8") * Decimal(100000)

    # A restart while the split bar is held (the first run ends on it) gives the same books.
    def daemon(name: str, end: str) -> Path:
        path = tmp_path / f"{name}.toml"
        db = tmp_path / f"{name}.sqlite"
        path.write_text(SPLIT_CONFIG.format(db=db, data=data, models=models, end=end))
        return path

    assert main(["-c", str(daemon("whole", SPLIT_END)), "run"]) == 0
    assert main(["-c", str(daemon("parts", "2020-08-31T14:00:00Z")), "run"]) == 0
    assert main(["-c", str(daemon("parts", SPLIT_END)), "run"]) == 0
    books = {}
    for name in ("whole", "parts"):
        run_url = f"sqlite:///{tmp_path / f'{name}.sqlite'}"
        books[name] = (
            db_rows(run_url, m.Fill.ts, m.Fill.side, m.Fill.qty, m.Fill.price, order=m.Fill.id),
            db_rows(run_url, m.Split.symbol, m.Split.ts, m.Split.new_shares, order=m.Split.id),
            db_rows(run_url, m.Position.symbol, m.Position.qty, order=m.Position.symbol),
        )
    assert books["whole"] == books["parts"]
    assert books["whole"][0] == [tuple(r) for r in signed_fills(url)]
    assert len(books["whole"][1]) == 1


def test_a_two_year_gap_is_told_even_with_max_gap_bars_off(
    crypto_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 10, defect 6: the rows after 2018-01-26 moved two years on are traded with an alert."""
    data = copy_data(tmp_path / "data")
    later = timedelta(days=730)
    for path in data.glob("*.csv"):
        rows = rows_of(path)
        for row in rows:
            ts = datetime.fromisoformat(row["timestamp"])
            if ts >= datetime.fromisoformat("2018-01-26T00:00:00+00:00"):
                row["timestamp"] = (ts + later).strftime("%Y-%m-%dT%H:%M:%SZ")
        write_rows(path, rows)
    db = f"sqlite:///{tmp_path / 'gap.sqlite'}"
    config = write_crypto_project(tmp_path / "gap", db, crypto_model, data_dir=data)
    assert main(["-c", str(config), "backtest"]) == 0
    alerts: Any = cli_json(capsys, config, "alerts")
    gaps = sorted(
        (a["symbol"], a["details"]["bar_ts"], float(a["details"]["days"]))
        for a in alerts
        if a["kind"] == "data_gap"
    )
    assert gaps == [
        ("ETH-BTC", "2020-01-26T00:00:00+00:00", pytest.approx(730.003, abs=1e-3)),
        ("LTC-BTC", "2020-01-26T00:00:00+00:00", pytest.approx(730.003, abs=1e-3)),
    ]
    assert [f for f in fills(db) if f.ts.year == 2020], "a gap is told, not a reason to stop trading"
