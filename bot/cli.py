"""`paperbot [-c CONFIG] COMMAND`: run, backtest, train, trades, alerts, status, risk, halt, resume,
models, evaluate, db upgrade."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from bot.errors import ExitCode, OperationalError, TemporaryError


def _iso(text: str) -> datetime:
    from bot.bars import utc  # noqa: PLC0415  (bot.bars loads pydantic: not for `--help`)

    try:
        return utc(datetime.fromisoformat(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO date or time: {text!r}") from exc


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also documents the CLI in --help)."""
    parser = argparse.ArgumentParser(prog="paperbot", description=__doc__)
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=Path("config.toml"),
        help="configuration file (default: config.toml)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", help="the daemon: stream bars, trade on paper, record everything")
    bt = sub.add_parser(
        "backtest", help="the same engine on the replay feed, as fast as it can, in a new book"
    )
    bt.add_argument("--start", type=_iso, help="first bar time (ISO), default [feed] start")
    bt.add_argument("--end", type=_iso, help="end time, exclusive (ISO), default [feed] end")
    tr = sub.add_parser("train", help="train a strategy's LSTM and write a new model version")
    tr.add_argument("--strategy", help="strategy name (default: the first)")
    for name, formats in (
        ("trades", ["table", "csv", "json"]),
        ("alerts", ["table", "json"]),
        ("status", ["table", "json"]),
    ):
        p = sub.add_parser(
            name,
            help={
                "trades": "the fills, newest last",
                "alerts": "alerts, newest last",
                "status": "cash, equity, positions, trading state",
            }[name],
        )
        p.add_argument("--format", choices=formats, default="table")
        p.add_argument("--book", help="book name (default: the book of the latest run)")
    for name, text in (
        ("halt", "stop trading: the daemon sends no order until `resume` (recorded, alerted, persisted)"),
        ("resume", "trade again after a halt or a breach; re-bases the drawdown peak and the day"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--reason", default=f"operator {name}", help="why (recorded with the event)")
        p.add_argument("--strategy", help="strategy name (default: every strategy)")
        p.add_argument("--book", help="book name (default: [daemon] book)")
    rk = sub.add_parser("risk", help="risk limits, their current usage and the trading state")
    rk.add_argument("--format", choices=["table", "json"], default="table")
    rk.add_argument("--book", help="book name (default: the book of the latest run)")
    md = sub.add_parser("models", help="model versions on disk, with their registry status")
    md.add_argument("--format", choices=["table", "json"], default="table")
    ev = sub.add_parser(
        "evaluate", help="walk-forward evaluation against baselines, with confidence intervals"
    )
    ev.add_argument("--strategy", help="strategy name (default: the first)")
    ev.add_argument("--start", type=_iso, help="held-out span start (ISO), default [feed] start")
    ev.add_argument("--end", type=_iso, help="held-out span end, exclusive (ISO), default [feed] end")
    ev.add_argument("--folds", type=int, default=4, help="walk-forward folds (default 4)")
    ev.add_argument("--format", choices=["table", "json"], default="table")
    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_sub.add_parser("upgrade", help="apply Alembic migrations up to head")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script: the exit code is one of `ExitCode` (bot/errors.py). A user's
    error and a temporary fault are one line on stderr; only a bug prints a traceback."""
    args = build_parser().parse_args(argv)
    try:
        # Only now: `--help` and a usage error answer without loading the commands' libraries.
        from bot.commands import run_command  # noqa: PLC0415

        return run_command(args)
    except OperationalError as exc:
        return _say(exc, ExitCode.USER)
    except TemporaryError as exc:
        return _say(exc, ExitCode.TEMPORARY)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED


def _say(exc: Exception, code: ExitCode) -> int:
    """One line on stderr, whatever the message held."""
    print("paperbot: " + " ".join(str(exc).split()), file=sys.stderr)
    return code
