"""What each `paperbot` command does, once `bot.cli` has parsed its arguments.

Kept apart from the parser so that `--help` and a usage error answer before SQLAlchemy and pydantic load;
the commands that need a model (run, backtest, train, evaluate, models) import it themselves, so the
report and operator commands never load torch."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy.exc import SQLAlchemyError

from bot.config import AppConfig, load_config
from bot.control import render_risk, risk_report, set_trading_state
from bot.errors import OperationalError
from bot.journal import Journal
from bot.logs import configure_logging, get_logger
from bot.reports import (
    alerts,
    book_status,
    dumps_exact,
    find_book,
    render_csv,
    render_status,
    render_table,
    trades,
)
from bot.risk import TradingState
from bot.store import models as m
from bot.store.db import (
    database_problem,
    ensure_schema,
    make_engine,
    schema_is_current,
    session_factory,
    upgrade,
)

TRADE_COLUMNS = ["ts", "strategy", "symbol", "side", "qty", "price", "commission", "client_order_id"]
MODEL_COLUMNS = [
    "name",
    "version",
    "status",
    "trained_from",
    "trained_to",
    "validation_ic",
    "walk_forward_sharpe",
    "walk_forward_sharpe_ci",
]
ALERT_COLUMNS = ["ts", "severity", "kind", "strategy", "symbol", "message"]


def run_command(args: argparse.Namespace) -> int:
    """Load the configuration, set up logging and run the parsed command; its errors propagate to
    `bot.cli.main`, which maps them to exit codes (a database failure in paperbot's terms)."""
    config = load_config(args.config)
    configure_logging(
        config.daemon.log_level,
        config.daemon.log_file if args.command == "run" else None,
        stream=sys.stdout if args.command in ("run", "backtest", "train") else sys.stderr,
    )
    try:
        return _dispatch(args, config)
    except SQLAlchemyError as exc:
        raise database_problem(exc, config.daemon.database_url) from exc


def _dispatch(args: argparse.Namespace, config: AppConfig) -> int:
    if args.command in ("run", "backtest"):
        from bot.daemon import run_daemon  # noqa: PLC0415  (torch loads only for commands that need it)

        outcome = asyncio.run(
            run_daemon(
                config,
                command=args.command,
                config_path=args.config,
                start=getattr(args, "start", None),
                end=getattr(args, "end", None),
            )
        )
        print(render_status(outcome.status), file=sys.stderr)
        return 0
    if args.command == "train":
        from bot.model.train_command import train_strategy  # noqa: PLC0415

        folder = train_strategy(config, args.strategy, get_logger("paperbot.train"))
        print(f"wrote {folder}", file=sys.stderr)
        return 0
    if args.command == "evaluate":
        from bot.evaluation.command import run_evaluation  # noqa: PLC0415
        from bot.evaluation.report import render_table  # noqa: PLC0415
        from bot.evaluation.runner import EvaluationSettings  # noqa: PLC0415

        if args.folds < 1:
            raise OperationalError("--folds must be at least 1")
        evaluation, page = asyncio.run(
            run_evaluation(
                config,
                args.config,
                args.strategy,
                start=args.start,
                end=args.end,
                settings=EvaluationSettings(folds=args.folds),
                log=get_logger("paperbot.evaluate"),
            )
        )
        print(dumps_exact(evaluation.report) if args.format == "json" else render_table(evaluation.report))
        print(f"equity curves: {page}", file=sys.stderr)
        return 0
    if args.command == "models":
        return _models(args, config)
    if args.command in ("halt", "resume"):
        return _operator(args, config)
    if args.command == "db":
        upgrade(config.daemon.database_url)
        print("database is at the latest migration", file=sys.stderr)
        return 0
    return _report(args, config)


def _models(args: argparse.Namespace, config: AppConfig) -> int:
    from bot.model.catalog import list_models  # noqa: PLC0415

    engine = make_engine(config.daemon.database_url, config.daemon.database_busy_timeout_seconds)
    try:
        sessions = session_factory(engine) if schema_is_current(engine) else None
        rows = list_models(sessions, sorted({s.model_dir for s in config.strategies}))
    finally:
        engine.dispose()
    if args.format == "json":
        print(dumps_exact(rows))
    else:
        print(render_table(rows, MODEL_COLUMNS))
    return 0


def _operator(args: argparse.Namespace, config: AppConfig) -> int:
    """`halt` / `resume`: works on a stopped daemon's database as well as under a running one."""
    scopes = [config.strategy(args.strategy).name] if args.strategy else [s.name for s in config.strategies]
    state = TradingState.HALTED if args.command == "halt" else TradingState.ACTIVE
    ensure_schema(config.daemon.database_url)
    engine = make_engine(config.daemon.database_url, config.daemon.database_busy_timeout_seconds)
    try:
        sessions = session_factory(engine)
        name = args.book or config.daemon.book
        kind = m.BookKind.DAEMON.value if name == config.daemon.book else m.BookKind.BACKTEST.value
        cash = config.broker.initial_cash()
        if cash is None and find_book(sessions, name, name) is None:
            raise OperationalError(
                f"no book {name!r} yet: the daemon opens it, with the broker account's cash, on its first run"
            )
        book_id = Journal.open_book(sessions, name, kind, cash or Decimal(0))
        for result in set_trading_state(
            sessions, book_id, scopes, state, reason=args.reason, now=datetime.now(UTC)
        ):
            c = result.change
            print(f"{name} {c.scope}: {c.previous} -> {c.state} ({c.reason})", file=sys.stderr)
        return 0
    finally:
        engine.dispose()


def _report(args: argparse.Namespace, config: AppConfig) -> int:
    engine = make_engine(config.daemon.database_url, config.daemon.database_busy_timeout_seconds)
    try:
        sessions = session_factory(engine)
        book = find_book(sessions, args.book, config.daemon.book)
        if book is None:
            raise OperationalError(f"no book {args.book or config.daemon.book!r} in the database yet")
        if args.command == "risk":
            report = risk_report(sessions, book.id, config.strategies, datetime.now(UTC))
            print(dumps_exact(report) if args.format == "json" else render_risk(report))
            return 0
        if args.command == "status":
            status = book_status(sessions, book.id)
            print(dumps_exact(status.to_json()) if args.format == "json" else render_status(status))
            return 0
        rows, columns = (
            (trades(sessions, book.id), TRADE_COLUMNS)
            if args.command == "trades"
            else (alerts(sessions, book.id), ALERT_COLUMNS)
        )
        if args.format == "json":
            print(dumps_exact(rows))
        elif args.format == "csv":
            print(render_csv(rows, columns), end="")
        else:
            print(render_table(rows, columns))
        return 0
    finally:
        engine.dispose()
