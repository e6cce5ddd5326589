"""The model registry in SQL: train registers a candidate, the daemon activates what it trades."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from helpers import cli_json, write_crypto_project

from bot.cli import main
from bot.config import load_config
from bot.daemon import run_daemon
from bot.store.db import upgrade


def _statuses(capsys: pytest.CaptureFixture[str], config: Path) -> dict[str, str]:
    rows: Any = cli_json(capsys, config, "models")
    return {r["version"]: r["status"] for r in rows}


def test_train_registers_and_run_activates(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_crypto_project(tmp_path, db_url, tmp_path / "models" / "lstm-crypto")
    upgrade(db_url)
    assert main(["-c", str(config), "train"]) == 0
    assert _statuses(capsys, config) == {"0001": "candidate"}

    async def trade_a_little() -> None:
        await run_daemon(
            load_config(config),
            command="run",
            config_path=config,
            install_signals=False,
            stop_after_batches=3,
        )

    asyncio.run(trade_a_little())
    assert _statuses(capsys, config) == {"0001": "active"}

    assert main(["-c", str(config), "train"]) == 0
    assert _statuses(capsys, config) == {"0001": "active", "0002": "candidate"}
    assert main(["-c", str(config), "backtest", "--end", "2018-01-25T06:00"]) == 0  # changes no status
    assert _statuses(capsys, config) == {"0001": "active", "0002": "candidate"}
    asyncio.run(trade_a_little())  # run loads the newest version
    rows: Any = cli_json(capsys, config, "models")
    assert {r["version"]: r["status"] for r in rows} == {"0001": "retired", "0002": "active"}
    assert rows[1]["trained_to"] < "2018-01-25"  # trained only on bars before the replay
    assert len(rows[1]["data_sha256"]) == 64
