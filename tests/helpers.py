"""Helpers shared by the end-to-end tests: a throwaway project (config, data, model dir) on real bars."""

from __future__ import annotations

import json
import shutil
from decimal import Decimal
from pathlib import Path

from bot.cli import main

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
CRYPTO_DATA = TESTS / "data" / "crypto-5m"

CRYPTO_CONFIG = """
[daemon]
database_url = "{db_url}"
equity_snapshot_seconds = {snapshot_seconds}

[feed]
kind = "replay"
data_dir = "{data_dir}"
speed = {speed}
start = "2018-01-25T00:00:00Z"
{feed_extra}

[broker]
kind = "sim"
starting_cash = "100"
commission_bps = 10
slippage_bps = 5

[[strategies]]
name = "lstm-crypto"
symbols = ["ETH-BTC", "LTC-BTC"]
timeframe = "5m"
model_dir = "{model_dir}"
entry_threshold = 0.0
full_signal_return = 0.0005
allow_short = true
rebalance_band = 0.05

[strategies.features]
return_lags = [1, 3]
zscore_window = 12
rsi_window = 8
volatility_window = 12

[strategies.model]
window = 8
hidden = 8
layers = 1
dropout = 0.0
{model_extra}

[strategies.training]
epochs = 2
batch_size = 128
seed = 3

[strategies.risk]
max_drawdown = {max_drawdown}
max_position_fraction = 0.4
max_gross_exposure = 1.0
max_order_notional = 60
lot_size = 0.01
"""


def write_crypto_project(
    root: Path,
    db_url: str,
    model_dir: Path,
    *,
    data_dir: Path = CRYPTO_DATA,
    speed: float = 0,
    feed_extra: str = "",
    max_drawdown: float = 0.5,
    snapshot_seconds: float = 3600,
    model_extra: str = "",
) -> Path:
    """A config.toml for two crypto pairs that are not the bundled data; returns its path."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.toml"
    config.write_text(
        CRYPTO_CONFIG.format(
            db_url=db_url,
            data_dir=data_dir,
            model_dir=model_dir,
            speed=speed,
            feed_extra=feed_extra,
            max_drawdown=max_drawdown,
            snapshot_seconds=snapshot_seconds,
            model_extra=model_extra,
        ),
        encoding="utf-8",
    )
    return config


def copy_data(target: Path) -> Path:
    """A writable copy of the crypto CSVs (for tests that damage them)."""
    shutil.copytree(CRYPTO_DATA, target)
    return target


def cli_json(capsys: object, config: Path, *args: str) -> object:
    """Run a CLI report command and parse its JSON output."""
    capsys.readouterr()  # type: ignore[attr-defined]
    assert main(["-c", str(config), *args, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out, parse_float=Decimal)  # type: ignore[attr-defined]
