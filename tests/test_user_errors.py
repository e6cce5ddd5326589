"""Every user error is one line naming the file, key or value, with exit code 2 (never restarted by the
systemd unit); a database that does not answer is one line with exit code 3 (restarted). No traceback."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import CRYPTO_DATA, write_crypto_project

from bot.cli import main
from bot.errors import ExitCode

HEADER = "timestamp,open,high,low,close,volume"
SHORT = 'end = "2018-01-25T01:00:00Z"'
URL = r'database_url = ".*"'


@pytest.fixture
def project(tmp_path: Path, crypto_model: Path) -> tuple[Path, Path]:
    """A crypto project over a writable copy of the data (one hour of it); its config and ETH-BTC's file."""
    data = tmp_path / "data"
    shutil.copytree(CRYPTO_DATA, data)
    config = write_crypto_project(
        tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", crypto_model, data_dir=data, feed_extra=SHORT
    )
    return config, data / "ETH-BTC.csv"


def run(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["-c", str(config), *(args or ("backtest",))])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def rewrite(path: Path, change: Callable[[bytes], bytes]) -> None:
    path.write_bytes(change(path.read_bytes()))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b"", "ETH-BTC.csv: empty file; it needs the header timestamp,open,high,low,close,volume"),
        (lambda b: b.split(b"\n")[0] + b"\n", "ETH-BTC.csv: no bar in it: only the header"),
        (
            lambda b: b.replace(b",volume", b"", 1),
            "ETH-BTC.csv: the header is timestamp,open,high,low,close,",
        ),
        (
            lambda b: b.replace(b"volume", b"volume,trades", 1),
            "the header is timestamp,open,high,low,close,volume,trades",
        ),
        (lambda b: b.replace(b"open,high", b"high,open", 1), "the header is timestamp,high,open,"),
        (
            lambda b: b.replace(b"\n2018-01-10T05:00", b"\n2018-01-10T05:00\xff", 1),
            "ETH-BTC.csv:3: not UTF-8 text",
        ),
    ],
    ids=["empty", "header only", "missing column", "extra column", "reordered", "not utf-8"],
)
def test_a_bad_data_file_is_one_line_and_exit_code_2(
    project: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    change: Callable[[bytes], bytes],
    message: str,
) -> None:
    config, path = project
    rewrite(path, change)
    code, err = run(config, capsys)
    assert code == ExitCode.USER
    assert err.count("\n") == 1
    assert message in err


def test_a_byte_order_mark_is_read_as_the_spreadsheet_meant(
    project: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, path = project
    rewrite(path, lambda b: b"\xef\xbb\xbf" + b)
    code, err = run(config, capsys)
    assert code == ExitCode.DONE, err
    assert "last bar        ETH-BTC 2018-01-25 00:55" in err


@pytest.mark.parametrize(
    ("pattern", "setting", "message"),
    [
        (URL, 'database_url = "sqlite:////proc/nowhere/db.sqlite"', "daemon.database_url: cannot create the"),
        (URL, 'database_url = "postgres://u@127.0.0.1/x"', "daemon.database_url: SQLAlchemy has no dialect"),
        (URL, 'database_url = "mysql+pymysql://u@127.0.0.1/x"', "daemon.database_url: the driver of 'mysql"),
        (r"\[daemon\]", '[daemon]\nlog_file = "/proc/nowhere/x.log"', "daemon.log_file: cannot write /proc"),
        ("allow_short = true", 'allow_short = "no"', "strategies[0].allow_short: Input should be a valid"),
        ("entry_threshold = 0.0", "entry_threshold = 0.001", "strategies[0].entry_threshold: 0.001 is not"),
    ],
    ids=["database folder", "postgres scheme", "missing driver", "log file", "string boolean", "threshold"],
)
def test_a_bad_setting_is_one_line_and_exit_code_2(
    project: tuple[Path, Path], capsys: pytest.CaptureFixture[str], pattern: str, setting: str, message: str
) -> None:
    config, _ = project
    config.write_text(re.sub(pattern, setting.replace("\\", "\\\\"), config.read_text(), count=1))
    code, err = run(config, capsys, "run")
    assert code == ExitCode.USER
    assert err.count("\n") == 1
    assert f"config error at {message}" in err


def test_a_corrupt_model_is_one_line(
    project: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = project
    text = config.read_text()
    model_dir = Path(text.split('model_dir = "')[1].split('"')[0])
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "0001" / "model.pt").write_bytes((model_dir / "0001" / "model.pt").read_bytes()[:100])
    config.write_text(text.replace(str(model_dir), str(broken)))
    code, err = run(config, capsys)
    assert code == ExitCode.USER
    assert err.count("\n") == 1
    assert "config error at strategies[0].model_dir: cannot load model" in err


@pytest.mark.parametrize("command", ["status", "trades", "run", "halt"])
def test_an_unreachable_database_is_one_line_and_exit_code_3(
    project: tuple[Path, Path], capsys: pytest.CaptureFixture[str], command: str
) -> None:
    config, _ = project
    # The daemon retries a connection that fails (the server may be restarting): here for half a second.
    unreachable = (
        'database_url = "postgresql+psycopg://paperbot:s3cret@127.0.0.1:1/nowhere"\n'
        "database_retry_seconds = 0.5"
    )
    config.write_text(re.sub(URL, unreachable, config.read_text(), count=1))
    code, err = run(config, capsys, command)
    assert code == ExitCode.TEMPORARY
    assert err.count("\n") == 1
    assert "database error at postgresql+psycopg://paperbot:***@127.0.0.1:1/nowhere" in err
    assert ("(still failing after 0." in err) == (command == "run")
    assert "s3cret" not in err


def test_a_timestamp_without_a_zone_is_an_alert_not_a_guess(
    project: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, path = project
    rewrite(path, lambda b: b.replace(b"2018-01-25T00:30:00Z", b"2018-01-25T00:30:00", 1))
    code, err = run(config, capsys)
    assert code == ExitCode.DONE, err
    capsys.readouterr()
    assert main(["-c", str(config), "alerts", "--format", "json"]) == 0
    alerts = json.loads(capsys.readouterr().out)
    assert [a["message"] for a in alerts if a["kind"] == "feed_problem"] == [
        "ETH-BTC.csv:4269: no time zone in '2018-01-25T00:30:00'"
    ]
    assert "last bar        ETH-BTC 2018-01-25 00:55" in err  # the bars around it trade as before
