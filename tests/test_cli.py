"""The CLI as a user meets it: config errors stop the start naming the key, the daemon stops cleanly on a
signal and continues afterwards, reports come in every format."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO, cli_json, write_crypto_project
from sqlalchemy import select

from bot.cli import main
from bot.store import models as m
from bot.store.db import make_engine, session_factory

TRAINED = REPO / "models" / "lstm-equities"
MODEL_LINE = f'model_dir = "{TRAINED}"'


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


GOOD = f"""
[daemon]
database_url = "sqlite:///db.sqlite"
[feed]
kind = "replay"
data_dir = "{REPO / "data" / "equities-1h"}"
start = "2021-03-01T00:00:00Z"
[[strategies]]
name = "s"
symbols = ["SPY"]
{MODEL_LINE}
[strategies.features]
extra = ["macd", "bollinger", "atr", "vwap", "obv", "time"]
outlier_k = 10.0
[strategies.model]
horizons = [1, 5, 20]
"""


@pytest.mark.parametrize(
    ("change", "key", "reason"),
    [
        (("[feed]", "[feed]\nfrequency = 3"), "feed.frequency", "unknown key"),
        (('kind = "replay"', 'kind = "kafka"'), "feed.kind", "replay"),
        (
            ("[[strategies]]", "[[strategies]]\nmax_drawdown = 0.1"),
            "strategies[0].max_drawdown",
            "unknown key",
        ),
        (('symbols = ["SPY"]', 'symbols = ["SPY", "NOPE"]'), "strategies[0].symbols", "NOPE.csv"),
        (("equities-1h", "equities-9h"), "feed.data_dir", "does not exist"),
        (
            (MODEL_LINE, MODEL_LINE + "\n[strategies.risk]\nmax_drawdown = 1.5"),
            "strategies[0].risk.max_drawdown",
            "less than 1",
        ),
        (('name = "s"', 'name = "s"\ntimeframe = "1y"'), "strategies[0].timeframe", "1y"),
        (("[daemon]", '[daemon]\ndevice = "tpu"'), "daemon.device", "auto"),
        (("sqlite:///db.sqlite", "not a url:s3cret"), "daemon.database_url", "cannot parse"),
    ],
)
def test_bad_config_stops_the_start_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: tuple[str, str], key: str, reason: str
) -> None:
    config = _config(tmp_path, GOOD.replace(*change))
    assert main(["-c", str(config), "run"]) == 2
    err = capsys.readouterr().err
    assert f"config error at {key}:" in err
    assert reason in err
    assert "s3cret" not in err
    assert not (tmp_path / "db.sqlite").exists(), "nothing may start, or trade, on a bad config"


def test_missing_config_file_and_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-c", str(tmp_path / "nope.toml"), "status"]) == 2
    assert "config file not found" in capsys.readouterr().err

    config = _config(tmp_path, GOOD.replace(str(TRAINED), str(tmp_path / "no-model")))
    assert main(["-c", str(config), "backtest"]) == 2
    err = capsys.readouterr().err
    assert "config error at strategies[0].model_dir" in err
    assert "paperbot train" in err
    assert not (tmp_path / "db.sqlite").exists()


def test_model_that_does_not_match_the_config_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, GOOD.replace("horizons = [1, 5, 20]", "horizons = [1, 5, 20]\nwindow = 16"))
    assert main(["-c", str(config), "run"]) == 2
    assert "window 32 != config strategies.model.window 16" in capsys.readouterr().err


def test_reports_in_every_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, GOOD.replace('symbols = ["SPY"]', 'symbols = ["SPY", "AAPL", "IBM"]'))
    assert main(["-c", str(config), "backtest", "--end", "2021-03-20"]) == 0
    capsys.readouterr()
    trades = cli_json(capsys, config, "trades")
    assert isinstance(trades, list)
    assert main(["-c", str(config), "trades", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "ts,strategy,symbol,side,qty,price,commission,client_order_id"
    assert len(lines) == len(trades) + 1
    assert main(["-c", str(config), "trades"]) == 0
    assert capsys.readouterr().out.splitlines()[0].split() == [
        "ts",
        "strategy",
        "symbol",
        "side",
        "qty",
        "price",
        "commission",
        "client_order_id",
    ]
    status = cli_json(capsys, config, "status")
    assert isinstance(status, dict)
    assert {"cash", "equity", "positions", "trading_state", "last_bar"} <= set(status)
    assert status["last_bar"]["SPY"] == "2021-03-19T19:00:00+00:00"  # after the DST change
    assert status["last_run"]["status"] == "completed"
    assert isinstance(cli_json(capsys, config, "alerts"), list)
    assert main(["-c", str(config), "status"]) == 0
    assert "trading state   ACTIVE" in capsys.readouterr().out

    # The reports read the database only: the replay's files are checked when a feed is built, not here.
    moved = _config(tmp_path, config.read_text().replace("equities-1h", "equities-gone"))
    assert main(["-c", str(moved), "status"]) == 0
    assert main(["-c", str(moved), "backtest"]) == 2
    assert "config error at feed.data_dir: folder" in capsys.readouterr().err


def _paperbot(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bot", "-c", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_daemon_stops_cleanly_on_a_signal_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sig: signal.Signals, crypto_model: Path
) -> None:
    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    config = write_crypto_project(tmp_path, db_url, crypto_model, speed=6000, snapshot_seconds=0.5)

    proc = _paperbot(config, "run")
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    first: float | None = None
    for line in proc.stdout:  # stream for 2 s: several periodic snapshot intervals
        event = json.loads(line)
        if event.get("event") == "decision" and not event["warming_up"]:
            first = first or time.monotonic()
            if time.monotonic() - first > 2:
                break
        assert time.monotonic() < deadline, "no decisions streamed"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "book            paper" in err  # the one-screen summary

    status = cli_json(capsys, config, "status")
    assert isinstance(status, dict)
    assert status["last_run"]["status"] == "stopped"
    stopped_at = status["last_bar"]["ETH-BTC"]
    engine = make_engine(db_url)
    try:  # the scheduler's equity-snapshot job ran on the wall clock beside the per-bar snapshots
        with session_factory(engine)() as session:
            kinds = set(session.scalars(select(m.EquitySnapshot.kind)))
        assert kinds == {"bar", "periodic"}
    finally:
        engine.dispose()
    assert stopped_at < "2018-01-26"

    # Started again, it continues from the last processed bar and runs to the end of its span.
    config.write_text(config.read_text().replace("speed = 6000", 'speed = 0\nend = "2018-01-26T06:00:00Z"'))
    proc = _paperbot(config, "run")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    first = next(json.loads(x) for x in out.splitlines() if '"decision"' in x)
    assert first["bar_ts"] > stopped_at
    status = cli_json(capsys, config, "status")
    assert isinstance(status, dict)
    assert status["last_run"]["status"] == "completed"
    assert status["last_bar"]["ETH-BTC"] == "2018-01-26T05:55:00+00:00"


def test_books_share_a_database_without_colliding(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two backtests and the daemon's book over the same bars: separate orders, identical decisions."""
    config = _config(tmp_path, GOOD.replace('symbols = ["SPY"]', 'symbols = ["SPY", "AAPL", "IBM"]'))
    runs = []
    for command in (["backtest", "--end", "2021-03-10"], ["backtest", "--end", "2021-03-10"]):
        assert main(["-c", str(config), *command]) == 0
        capsys.readouterr()
        status: Any = cli_json(capsys, config, "status")
        runs.append((status["book"], cli_json(capsys, config, "trades")))
    (first, trades_1), (second, trades_2) = runs
    assert first != second
    assert trades_1, "the bundled model should trade in 7 days of three symbols"
    strip = [{k: v for k, v in t.items() if k not in ("client_order_id", "broker_fill_id")} for t in trades_1]
    assert strip == [
        {k: v for k, v in t.items() if k not in ("client_order_id", "broker_fill_id")} for t in trades_2
    ]
    assert {t["client_order_id"] for t in trades_1}.isdisjoint(t["client_order_id"] for t in trades_2)
    assert cli_json(capsys, config, "trades", "--book", first) == trades_1
