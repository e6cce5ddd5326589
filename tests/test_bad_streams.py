"""Property tests: real crypto bars damaged at random (bad rows, future and duplicate timestamps, a huge gap,
implausible jumps), run through the whole daemon on SQLite, stopped at a random batch and restarted.

Whatever the damage: no crash, no order decided on and no fill at a rejected bar, an alert for each bad
row, and the restarted run's fills equal those of a run that never stopped.

`PAPERBOT_PROPERTY_EXAMPLES` sets how many random streams are tried (default 4, for `make test`)."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from helpers import CRYPTO_DATA, write_crypto_project
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from bot.config import load_config
from bot.daemon import run_daemon
from bot.store import models as m
from bot.store.db import make_engine, session_factory, upgrade

EXAMPLES = int(os.environ.get("PAPERBOT_PROPERTY_EXAMPLES", "4"))
START = datetime.fromisoformat("2018-01-25T00:00:00+00:00")
SPAN = 96  # bars per symbol after START: eight hours of 5-minute bars
SYMBOLS = ("ETH-BTC", "LTC-BTC")
DAMAGES = ("tick", "nan", "huge", "negative", "duplicate", "future")


@dataclass(frozen=True)
class Damage:
    symbol: str
    index: int  # bars after START
    kind: str


@st.composite
def plans(draw: Any) -> tuple[list[Damage], tuple[str, int] | None, int]:
    """Damaged rows (never two within two bars of each other in one symbol, so each bad tick has a good
    bar after it), perhaps a gap of months in one symbol, and the batch after which the first run stops."""
    damages = []
    for symbol in SYMBOLS:
        spots = draw(st.sets(st.integers(2, SPAN - 3).map(lambda i: i - i % 3), max_size=4))
        damages += [Damage(symbol, i, draw(st.sampled_from(DAMAGES))) for i in sorted(spots)]
    gap = draw(st.none() | st.tuples(st.sampled_from(SYMBOLS), st.integers(SPAN // 2, SPAN - 10)))
    return damages, gap, draw(st.integers(5, SPAN - 5))


def stamp(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def write_stream(folder: Path, damages: list[Damage], gap: tuple[str, int] | None) -> None:
    """The crypto files up to START + SPAN bars, damaged; a gap moves a symbol's later rows 200 days on."""
    folder.mkdir()
    end = START + timedelta(minutes=5 * SPAN)
    for symbol in SYMBOLS:
        with (CRYPTO_DATA / f"{symbol}.csv").open(newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if datetime.fromisoformat(r["timestamp"]) < end]
        first = next(i for i, r in enumerate(rows) if datetime.fromisoformat(r["timestamp"]) >= START)
        out: list[dict[str, str]] = []
        for offset, original in enumerate(rows):
            row = dict(original)
            index = offset - first
            if gap is not None and gap[0] == symbol and index > gap[1]:
                row["timestamp"] = stamp(datetime.fromisoformat(row["timestamp"]) + timedelta(days=200))
            kind = next((d.kind for d in damages if d.symbol == symbol and d.index == index), None)
            if kind == "tick":
                row |= {k: repr(float(row[k]) * 10) for k in ("open", "high", "low", "close")}
            elif kind == "nan":
                row["close"] = "nan"
            elif kind == "huge":
                row["high"] = "1e300"
            elif kind == "negative":
                row["low"] = "-1"
            elif kind == "future":
                row["timestamp"] = "2099-01-01T00:00:00Z"
            out.append(row)
            if kind == "duplicate":
                out.append(row | {"close": repr(float(row["close"]) * 1.01)})
        with (folder / f"{symbol}.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(out[0]))
            writer.writeheader()
            writer.writerows(out)


def run(config: Path, batches: int | None = None) -> None:
    asyncio.run(
        run_daemon(
            load_config(config),
            command="run",
            config_path=config,
            install_signals=False,
            stop_after_batches=batches,
        )
    )


def rows(url: str, *columns: Any) -> list[Any]:
    engine = make_engine(url)
    try:
        with session_factory(engine)() as session:
            return [tuple(r) for r in session.execute(select(*columns)).all()]
    finally:
        engine.dispose()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # an example takes seconds: no shrinking
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(plan=plans())
def test_damaged_streams_never_trade_a_rejected_bar_and_restart_the_same(
    crypto_model: Path, plan: tuple[list[Damage], tuple[str, int] | None, int]
) -> None:
    damages, gap, stop_after = plan
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_stream(root / "data", damages, gap)
        results = {}
        for name, parts in (("whole", [None]), ("restarted", [stop_after, None])):
            url = f"sqlite:///{root / name / 'db.sqlite'}"
            config = write_crypto_project(root / name, url, crypto_model, data_dir=root / "data")
            upgrade(url)
            for batches in parts:
                run(config, batches)
            results[name] = url

        url = results["whole"]
        fills = rows(url, m.Fill.symbol, m.Fill.ts, m.Fill.side, m.Fill.qty, m.Fill.price)
        assert sorted(fills) == sorted(
            rows(results["restarted"], m.Fill.symbol, m.Fill.ts, m.Fill.side, m.Fill.qty, m.Fill.price)
        )
        alerts = [
            (kind, symbol, text, json.loads(details or "{}"))
            for kind, symbol, text, details in rows(
                url, m.Alert.kind, m.Alert.symbol, m.Alert.message, m.Alert.details_json
            )
        ]
        orders = {(s, ts) for s, ts in rows(url, m.Order.symbol, m.Order.bar_ts)}
        filled = {(s, ts) for s, ts, *_ in fills}
        rejected = {
            (symbol, datetime.fromisoformat(details["bar_ts"]))
            for kind, symbol, _, details in alerts
            if kind in ("bar_rejected", "late_bar")  # a second row for a decided instant is late
        }
        for damage in damages:
            ts = START + timedelta(minutes=5 * damage.index)
            if gap is not None and gap[0] == damage.symbol and damage.index > gap[1]:
                ts += timedelta(days=200)
            if damage.kind == "future":  # the row is refused as it is read: a feed problem names it
                assert any(k == "feed_problem" and "2099" in text for k, _, text, _ in alerts), damage
                continue
            assert (damage.symbol, ts) in rejected, damage
            if damage.kind != "duplicate":  # the first of two rows at one time is a good bar
                assert (damage.symbol, ts) not in orders, f"an order decided on a rejected bar: {damage}"
                assert (damage.symbol, ts) not in filled, f"a fill at a rejected bar: {damage}"
        if gap is not None:
            assert any(k == "data_gap" and s == gap[0] for k, s, _, _ in alerts)
