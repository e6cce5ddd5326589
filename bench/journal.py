"""The journal's cost per batch: what `Journal.record_batch` and the recording of the submits' answers take,
at 1, 100 and 1000 symbols, on SQLite (a fresh file, WAL and synchronous=NORMAL as `bot.store.db` sets
them) and on PostgreSQL (a fresh schema, dropped afterwards).

    PYTHONPATH=$PWD .venv/bin/python -m bench.journal [--symbols 1,100,1000] [--batches N] [--warmup N]
        [--backends sqlite,postgresql] [--postgres-url URL] [--answers batched|per-order|both] [--json]

Each batch is what the engine records for one close instant of an hourly replay with the simulated broker,
in steady state: a market_state row and 3 predictions (horizons 1-3) per symbol; a risk decision (13
checks) for every fifth symbol-bar, three of four approved with an order intent, the fourth denied; the
fills of the previous batch's orders (one OrderUpdate each, fill and status FILLED) and their positions;
an alert for one symbol-bar in 50; the equity point; the strategy's trading-state tracker. Then the
submits' answers (NEW with the broker's order id), recorded as the engine records them: `per-order` is one
transaction per answer (the engine before issue 11), `batched` one transaction for all the answers of the
batch. Every write goes through `DatabaseRetry.write_once`, as the engine's do (on PostgreSQL that
includes the transaction id noted before each commit).

Per case: --warmup batches, then --batches timed ones; milliseconds per batch (all its transactions),
p50, p90 and mean, and the load average (a shared 2-core machine moves these numbers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from bot.alerts import Alert, AlertKind, Severity
from bot.bars import Bar
from bot.config import RiskSettings
from bot.journal import BatchRecord, Decision, EquityPoint, Journal
from bot.ledger import Position
from bot.orders import BrokerOrder, Fill, OrderIntent, OrderStatus, OrderUpdate, Side, client_order_id
from bot.risk import (
    CHECK_CODES,
    CheckOutcome,
    CheckResult,
    OrderRequest,
    RiskDecision,
    RiskOutcome,
    TradingStateTracker,
)
from bot.store import models as m
from bot.store.db import make_engine, session_factory, upgrade
from bot.store.retry import DatabaseRetry, RetryPolicy
from bot.strategy import Prediction, Target

START = datetime(2024, 1, 2, 14, tzinfo=UTC)
STRATEGY = "bench"
BOOK = "bench"
HORIZONS = (1, 2, 3)
DECIDE_EVERY = 5  # a symbol gets a risk decision every fifth bar
DENY_EVERY = 4  # every fourth decision is denied: no intent
ALERT_EVERY = 50  # one symbol-bar in 50 raises an alert (drift, outlier)


@dataclass(frozen=True)
class Result:
    """One case's timings, in milliseconds per batch."""

    backend: str
    symbols: int
    answers: str
    batches: int
    p50_ms: float
    p90_ms: float
    mean_ms: float
    orders_per_batch: float
    loadavg: tuple[float, float, float]


class Workload:
    """The batches of a steady-state replay over `n` symbols, made deterministically."""

    def __init__(self, n: int, model_version_id: int) -> None:
        self.model_version_id = model_version_id
        self.symbols = [f"S{i:04d}" for i in range(n)]
        self.tracker = TradingStateTracker(STRATEGY, RiskSettings(), peak=Decimal("100000"))
        self._open: list[tuple[OrderIntent, Decimal]] = []  # last batch's orders and their bar's close
        self._qty: dict[str, Decimal] = {}

    @staticmethod
    def _price(i: int, b: int) -> float:  # a float price with cents, as feeds give
        return round(50.0 + (i % 97) + 0.37 * ((b * 7 + i) % 13), 2)

    def batch(self, b: int) -> tuple[BatchRecord, list[OrderUpdate]]:
        """Batch `b` and the submits' answers that follow it."""
        ts = START + timedelta(hours=b)
        record = BatchRecord(ts=ts + timedelta(hours=1))
        for intent, last in self._open:  # the simulated broker fills last batch's orders at this open
            price = last + Decimal("0.01")
            commission = Decimal("0.005") * intent.qty
            fill = Fill(
                f"fill-{intent.client_order_id}", intent.client_order_id, intent.symbol, intent.side,
                intent.qty, price, commission, ts,
            )  # fmt: skip
            order = BrokerOrder(
                intent.client_order_id, f"sim-{intent.client_order_id}", OrderStatus.FILLED, intent.qty, price
            )
            record.updates.append(OrderUpdate(order, ts, fill))
            held = self._qty.get(intent.symbol, Decimal(0)) + intent.side.sign * intent.qty
            self._qty[intent.symbol] = held
            record.positions.append(Position(intent.symbol, held, price))
        self._open = []
        answers = []
        for i, symbol in enumerate(self.symbols):
            close = self._price(i, b)
            bar = Bar(symbol, ts, close - 0.1, close + 0.2, close - 0.3, close, 12345.0)
            record.bars.append(bar)
            record.timeframes[symbol] = "1h"
            prediction = Prediction(STRATEGY, symbol, ts, 0.0012 * ((i + b) % 7 - 3), 1, "0001")
            for h in HORIZONS:
                p = Prediction(STRATEGY, symbol, ts, prediction.predicted_return * h, h, "0001")
                weight = 0.25 * ((i + b) % 5 - 2)
                record.predictions.append((Target(STRATEGY, symbol, ts, weight, p), self.model_version_id))
            if (i + b) % ALERT_EVERY == 0:
                record.alerts.append(
                    Alert(
                        bar.close_time, Severity.WARNING, AlertKind.DRIFT, f"drift on {symbol}", STRATEGY,
                        symbol, {"detector": "adwin", "value": 0.0123, "bar_ts": ts.isoformat()},
                    )
                )  # fmt: skip
            if (i + b) % DECIDE_EVERY:
                continue
            decided = (i + b) // DECIDE_EVERY
            qty = Decimal(10 + i % 40)
            side = Side.BUY if decided % 2 else Side.SELL
            request = OrderRequest(STRATEGY, symbol, ts, side, qty, Decimal(str(close)))
            denied = decided % DENY_EVERY == 0
            checks = tuple(
                CheckResult(
                    code,
                    CheckOutcome.DENY if denied and code == "max_drawdown" else CheckOutcome.PASS,
                    qty,
                    "ok" if not denied else "drawdown 0.21 >= 0.2",
                )
                for code in CHECK_CODES
            )
            decision = RiskDecision(
                request,
                Decimal(0) if denied else qty,
                RiskOutcome.DENIED if denied else RiskOutcome.APPROVED,
                "max_drawdown" if denied else None,
                checks,
            )
            sent: OrderIntent | None = None
            if not denied:
                cid = client_order_id(BOOK, STRATEGY, symbol, ts)
                sent = OrderIntent(cid, STRATEGY, symbol, side, qty, ts)
                self._open.append((sent, Decimal(str(close))))
                answers.append(OrderUpdate(BrokerOrder(cid, f"sim-{cid}", OrderStatus.NEW), record.ts))
            record.decisions.append(Decision(decision, sent))
        cash = Decimal("100000") - Decimal(b)
        record.equity = EquityPoint(
            record.ts, cash, Decimal("250.5"), cash + Decimal("250.5"), Decimal(100000)
        )
        self.tracker.last_equity = cash
        record.trackers.append(self.tracker)
        return record, answers


@contextmanager
def database(backend: str, postgres_url: str | None) -> Iterator[str]:
    """The URL of a fresh, migrated database: a SQLite file in a temporary folder, or a PostgreSQL schema
    of its own (dropped afterwards)."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="bench-journal-") as folder:
            url = f"sqlite:///{Path(folder) / 'journal.sqlite'}"
            upgrade(url)
            yield url
        return
    if not postgres_url:
        raise SystemExit("postgresql: pass --postgres-url or set PAPERBOT_TEST_POSTGRES_URL")
    schema = f"bench_{uuid.uuid4().hex}"
    admin = create_engine(postgres_url, poolclass=NullPool)
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        parsed = make_url(postgres_url).update_query_dict({"options": f"-csearch_path={schema}"})
        rendered = parsed.render_as_string(hide_password=False)
        upgrade(rendered)
        try:
            yield rendered
        finally:
            with admin.begin() as connection:
                connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


async def measure(url: str, n: int, answers: str, warmup: int, batches: int) -> tuple[list[float], int]:
    """Milliseconds of journal writes per timed batch, and the orders they carried."""
    engine = make_engine(url)
    try:
        sessions = session_factory(engine)
        retry = DatabaseRetry(url, RetryPolicy(), sessions)
        journal = Journal(sessions, Journal.open_book(sessions, BOOK, "backtest", Decimal(100000)))
        journal.start_run("backtest", "0" * 64)
        with sessions.begin() as session:  # the predictions' model version, as catalog.register makes it
            version = m.ModelVersion(
                name="bench", version="0001", path="models/bench/0001", data_sha256="0" * 64,
                trained_from=START, trained_to=START, card_json="{}",
            )  # fmt: skip
            session.add(version)
            session.flush()
            workload_version = version.id
        workload = Workload(n, workload_version)
        times: list[float] = []
        orders = 0
        for b in range(warmup + batches):
            record, updates = workload.batch(b)
            began = time.perf_counter()
            await retry.write_once("record_batch", partial(journal.record_batch, record))
            if answers == "batched":
                if updates:
                    done = BatchRecord(ts=record.ts, updates=updates)
                    await retry.write_once("record_batch", partial(journal.record_batch, done))
            else:
                for update in updates:
                    one = BatchRecord(ts=record.ts, updates=[update])
                    await retry.write_once("record_batch", partial(journal.record_batch, one))
            elapsed = time.perf_counter() - began
            if b >= warmup:
                times.append(elapsed * 1000)
                orders += len(updates)
        return times, orders
    finally:
        engine.dispose()


def run_case(backend: str, n: int, answers: str, args: argparse.Namespace) -> Result:
    """One backend, symbol count and answer mode on a fresh database."""
    batches = args.batches if n < 1000 else max(10, args.batches // 4)
    with database(backend, args.postgres_url) as url:
        times, orders = asyncio.run(measure(url, n, answers, args.warmup, batches))
    times.sort()
    return Result(
        backend,
        n,
        answers,
        len(times),
        round(statistics.median(times), 3),
        round(times[int(0.9 * (len(times) - 1))], 3),
        round(statistics.fmean(times), 3),
        round(orders / len(times), 2),
        os.getloadavg(),
    )


def main(argv: list[str] | None = None) -> int:
    """Run the cases and print one line each (or JSON lines with --json)."""
    parser = argparse.ArgumentParser(prog="bench.journal", description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", default="1,100,1000", help="comma-separated symbol counts")
    parser.add_argument("--batches", type=int, default=200, help="timed batches (a quarter at 1000 symbols)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--postgres-url", default=os.environ.get("PAPERBOT_TEST_POSTGRES_URL"))
    parser.add_argument("--answers", choices=("batched", "per-order", "both"), default="batched")
    parser.add_argument("--json", action="store_true", help="one JSON object per case")
    args = parser.parse_args(argv)
    modes = ("per-order", "batched") if args.answers == "both" else (args.answers,)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    for backend in args.backends.split(","):
        if backend == "postgresql" and not args.postgres_url:
            print("postgresql: skipped (no --postgres-url, no PAPERBOT_TEST_POSTGRES_URL)")
            continue
        for n in (int(s) for s in args.symbols.split(",")):
            for mode in modes:
                result = run_case(backend, n, mode, args)
                if args.json:
                    print(json.dumps(asdict(result)), flush=True)
                else:
                    print(
                        f"{backend:10} {n:5} symbols  answers {mode:9}  p50 {result.p50_ms:8.3f} ms"
                        f"  p90 {result.p90_ms:8.3f} ms  mean {result.mean_ms:8.3f} ms"
                        f"  ({result.orders_per_batch:g} orders/batch, {result.batches} batches,"
                        f" load {' '.join(f'{x:.2f}' for x in result.loadavg)})",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
