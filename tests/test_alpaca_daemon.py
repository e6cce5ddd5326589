"""The whole daemon trading the fake Alpaca's paper account through alpaca-py: bars in, predictions,
orders with paperbot's client ids, fills recorded once, the books equal to the fake's account; and the
faults a real venue has (a 504 after the order was taken, a rejection, a kill while orders fill, a
position changed behind its back), with no key or secret anywhere it writes."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from alpaca_harness import (
    FIVE,
    KEY,
    MINUTE,
    SECRET,
    Daemon,
    btc_minutes,
    keyed_env,
    live_config,
    minute_bars,
    publish,
    rows,
    training_config,
    write_btc_5m,
)
from fake_alpaca import FakeAlpaca, MinuteBar

from bot.cli import main
from bot.config import load_config
from bot.daemon import run_daemon
from bot.engine import Engine
from bot.store import models as m
from bot.store.db import make_engine, session_factory

ROWS = btc_minutes()
LIVE = datetime(2022, 1, 28, tzinfo=UTC)  # where the training bars end and the live minutes begin
TRAIN, WARM = 5760, 720  # minutes: four days to train on; the last twelve hours of them, the fake's history


@pytest.fixture(scope="module")
def btc_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`paperbot train` on four days of 5-minute BTC bars."""
    root = tmp_path_factory.mktemp("btc")
    data = root / "data"
    data.mkdir()
    write_btc_5m(ROWS[:TRAIN], data / "BTCUSD.csv")
    model_dir = root / "models" / "btc"
    assert main(["-c", str(training_config(root, data, model_dir)), "train"]) == 0
    return model_dir


@pytest.fixture
def market() -> Iterator[tuple[FakeAlpaca, list[MinuteBar]]]:
    """The fake at 2022-01-28 00:00 UTC with the minutes before it; the ones after are the test's to publish
    (faster than they passed: the venue's clock runs ahead of the host's, which the config allows)."""
    asset = {"min_order_size": "0.0001", "min_trade_increment": "0.0001", "price_increment": "1"}
    with FakeAlpaca(
        key=KEY, secret=SECRET, asset_class="crypto", now=LIVE, assets={"BTC/USD": asset}
    ) as fake:
        fake.add_history("BTC/USD", minute_bars(ROWS[TRAIN - WARM : TRAIN], LIVE - WARM * MINUTE))
        yield fake, minute_bars(ROWS[TRAIN:], LIVE)
        assert fake.server_errors == []


def cli_json(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    capsys.readouterr()
    assert main(["-c", str(config), *args, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out, parse_float=Decimal)


def books_equal_the_fake(config: Path, fake: FakeAlpaca, capsys: pytest.CaptureFixture[str]) -> None:
    status = cli_json(config, capsys, "status")
    assert Decimal(status["cash"]) == fake.cash
    assert {s: Decimal(q) for s, q in status["positions"].items()} == {
        s.replace("BTCUSD", "BTC/USD"): q for s, q in fake.positions().items() if q
    }


def fills_equal_the_fake(db_url: str, fake: FakeAlpaca) -> list[Any]:
    """Every execution at the fake is one fill row, with its quantity and price."""
    fills = rows(db_url, m.Fill)
    ids = [f.broker_fill_id for f in fills]
    assert len(ids) == len(set(ids))
    ours = sorted((f.client_order_id, f.qty, f.price, f.broker_fill_id) for f in fills)
    theirs = sorted(
        (e.client_order_id, e.qty, e.price, f"{e.order_id}:{e.cum_qty.normalize():f}")
        for e in fake.executions
    )
    assert ours == theirs
    return fills


def wait_quiet(fake: FakeAlpaca, daemon: Daemon, db_url: str) -> None:
    """Until the daemon has recorded every execution the fake made."""
    assert fake.wait_until(lambda: len(rows(db_url, m.Fill)) == len(fake.executions), timeout=30), (
        daemon.lines[-10:]
    )


def test_the_daemon_trades_alpaca_paper_end_to_end(
    btc_model: Path,
    market: tuple[FakeAlpaca, list[MinuteBar]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake, live = market
    config = live_config(tmp_path, fake, btc_model)
    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    daemon = Daemon.started(config)
    faulted: dict[str, int] = {}  # the index of the order post each fault hit
    for i, _ in enumerate(publish(fake, live[:400], pace=0.015)):
        posts = len(fake.order_posts)
        if i == 40:
            fake.fail_next_submit(504, accept=True)  # the gateway timed out, the order was taken
            faulted["504"] = posts
        elif i == 62:
            assert fake.drop_data_connections() == 1  # minutes go by unheard until alpaca-py reconnects
        elif "504" in faulted and "rejected" not in faulted and posts > faulted["504"] + 1:
            fake.reject_next_order("not enough BTC to sell")
            faulted["rejected"] = posts
        elif "rejected" in faulted and posts > faulted["rejected"] + 1 and i >= 150:
            break
    wait_quiet(fake, daemon, db_url)
    # A correction of a bar already decided on is recorded and alerted, and decides nothing again.
    decided = datetime.fromisoformat(daemon.decisions()[-1]["bar_ts"])
    old = next(b for b in live if b.t == decided)
    fake.publish_update("BTC/USD", MinuteBar(old.t, old.o, old.h, old.l - 100, old.c, old.v))
    daemon.wait_for(lambda e: e.get("event") == "bar_revised", timeout=20)
    assert daemon.stop() == 0, daemon.finish()

    decisions = daemon.decisions()
    assert len(decisions) >= 25, "one decision per closed 5-minute bar"
    assert len({d["bar_ts"] for d in decisions}) == len(decisions), "each bar decided once, drop or not"
    assert fake.data_connections == 2
    posts = [p["client_order_id"] for p in fake.order_posts]
    assert posts and all(cid.startswith("pb-") for cid in posts)
    assert len(posts) == len(set(posts)), "no order is ever posted twice"
    orders = {o.client_order_id: o for o in rows(db_url, m.Order)}
    assert set(orders) == set(posts)
    fills_equal_the_fake(db_url, fake)
    books_equal_the_fake(config, fake, capsys)

    timed_out = posts[faulted["504"]]
    assert orders[timed_out].status == "filled"  # unknown, then settled by its events and reconciliation
    rejected = posts[faulted["rejected"]]
    assert orders[rejected].status == "rejected"
    alerts = cli_json(config, capsys, "alerts")
    kinds = {(a["kind"], a["details"].get("client_order_id")) for a in alerts}
    assert ("broker_error", timed_out) in kinds
    assert ("order_rejected", rejected) in kinds

    # The bars the daemon decided on are Alpaca's: each decision's close is the close of its 5 minutes.
    closes = {b.t: b.c for b in minute_bars(ROWS[TRAIN - WARM :], LIVE - WARM * MINUTE)}
    for decision in decisions:
        start = datetime.fromisoformat(decision["bar_ts"])
        assert decision["close"] == closes[start + FIVE - timedelta(minutes=1)]

    # No key or secret in anything it wrote: log lines, errors, database rows.
    everything = "".join(daemon.lines) + daemon.finish()
    engine = make_engine(db_url)
    try:
        with session_factory(engine)() as session:
            for table in m.Base.metadata.sorted_tables:
                everything += repr(session.execute(table.select()).all())
    finally:
        engine.dispose()
    assert KEY not in everything
    assert SECRET not in everything
    assert SECRET[:12] not in everything


def test_fills_while_the_daemon_was_killed_are_recorded_once_after_restart(
    btc_model: Path,
    market: tuple[FakeAlpaca, list[MinuteBar]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake, live = market
    fake.partial_fills = [0.3, 0.3, 0.4]  # an order fills over three minutes
    config = live_config(tmp_path, fake, btc_model)
    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    daemon = Daemon.started(config)
    sent = iter(live)
    for _ in publish(fake, sent, pace=0.015):
        if fake.order_posts:
            break
    daemon.wait_for(lambda e: e.get("event") == "decision" and e.get("order") is not None)
    daemon.kill()  # with an order working at the fake
    for _, bar in zip(range(12), sent, strict=False):  # it fills, part by part, while nobody watches
        fake.publish("BTC/USD", bar)
    executions = len(fake.executions)
    assert executions >= 3
    assert len(rows(db_url, m.Fill)) < executions

    assert [r.status for r in rows(db_url, m.Run)] == ["running"]  # as SIGKILL left it
    again = Daemon(config)
    again.wait_for(lambda e: e.get("event") == "reconciled" and e.get("why") == "start", timeout=90)
    assert [r.status for r in rows(db_url, m.Run)] == ["killed", "running"]
    assert fake.wait_until(lambda: len(rows(db_url, m.Fill)) == executions, timeout=20)
    for _, bar in zip(range(20), sent, strict=False):
        fake.publish("BTC/USD", bar)
    wait_quiet(fake, again, db_url)
    assert again.stop() == 0, again.finish()
    fills_equal_the_fake(db_url, fake)
    books_equal_the_fake(config, fake, capsys)


def test_a_position_changed_behind_its_back_halts_it(
    btc_model: Path,
    market: tuple[FakeAlpaca, list[MinuteBar]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake, live = market
    config = live_config(tmp_path, fake, btc_model)
    daemon = Daemon.started(config)
    for _ in publish(fake, live[:20]):
        pass
    held = fake.positions().get("BTCUSD", Decimal(0))
    fake.set_position("BTC/USD", held + Decimal("0.5"))
    daemon.wait_for(lambda e: e.get("event") == "trading_state" and e.get("state") == "HALTED", timeout=20)
    for _ in publish(fake, live[20:40]):
        pass
    assert daemon.stop() == 0
    status = cli_json(config, capsys, "status")
    assert status["trading_state"] == "HALTED"
    alerts = [a for a in cli_json(config, capsys, "alerts") if a["kind"] == "reconciliation"]
    assert alerts and "position BTC/USD" in alerts[0]["message"]
    risk = cli_json(config, capsys, "risk")
    assert risk["strategies"][0]["reason"].startswith("reconciliation: position BTC/USD")


@pytest.mark.parametrize(
    ("table", "line", "key", "reason"),
    [
        (
            "broker",
            'url = "https://api.alpaca.markets"',
            "broker.url",
            "neither loopback nor one of the paper hosts",
        ),
        ("feed", 'rest_url = "http://example.com"', "feed.rest_url", "neither loopback"),
        (
            "broker",
            'stream_url = "wss://user:pw@paper-api.alpaca.markets/stream"',
            "broker.stream_url",
            "credentials",
        ),
    ],
)
def test_anything_but_paper_or_loopback_stops_the_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], table: str, line: str, key: str, *, reason: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[daemon]\ndatabase_url = "sqlite:///{tmp_path / "db.sqlite"}"\n'
        f'[feed]\nkind = "alpaca"\nasset_class = "crypto"\n{line if table == "feed" else ""}\n'
        f'[broker]\nkind = "alpaca"\n{line if table == "broker" else ""}\n'
        f'[[strategies]]\nname = "s"\nsymbols = ["BTC/USD"]\ntimeframe = "5m"\nmodel_dir = "{tmp_path}"\n'
    )
    assert main(["-c", str(config), "run"]) == 2
    err = capsys.readouterr().err
    assert f"config error at {key}:" in err
    assert reason in err
    assert not (tmp_path / "db.sqlite").exists()


def test_without_keys_it_stops_naming_them(
    btc_model: Path,
    market: tuple[FakeAlpaca, list[MinuteBar]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake, _ = market
    config = live_config(tmp_path, fake, btc_model)
    monkeypatch.delenv("APCA_API_KEY_ID", raising=False)
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET)
    assert main(["-c", str(config), "run"]) == 2
    err = capsys.readouterr().err
    assert "APCA_API_KEY_ID" in err
    assert SECRET not in err


def test_order_updates_by_polling(
    btc_model: Path,
    market: tuple[FakeAlpaca, list[MinuteBar]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake, live = market
    config = live_config(tmp_path, fake, btc_model, broker='order_updates = "poll"\npoll_seconds = 0.2\n')
    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    daemon = Daemon.started(config)
    for _ in publish(fake, live[:80], pace=0.015):
        pass
    assert fake.executions, "the model traded"
    wait_quiet(fake, daemon, db_url)
    assert daemon.stop() == 0, daemon.finish()
    assert fake.trading_connections == 0, "polling: no trade_updates stream"
    fills_equal_the_fake(db_url, fake)
    books_equal_the_fake(config, fake, capsys)


def test_alpaca_bars_into_the_simulated_broker(
    btc_model: Path, market: tuple[FakeAlpaca, list[MinuteBar]], tmp_path: Path
) -> None:
    fake, live = market
    sim = 'kind = "sim"\nstarting_cash = "100000"\ncommission_bps = 1\nslippage_bps = 2\n'
    config = live_config(tmp_path, fake, btc_model, broker=sim, broker_kind="sim")
    daemon = Daemon.started(config)
    for _ in publish(fake, live[:80], pace=0.015):
        pass
    daemon.wait_for(lambda e: e.get("event") == "decision" and e["bar_ts"].startswith("2022-01-28T01:15"))
    assert daemon.stop() == 0, daemon.finish()
    fills = rows(f"sqlite:///{tmp_path / 'db.sqlite'}", m.Fill)
    assert fills and all(f.broker_fill_id.startswith("simfill-") for f in fills)
    opens = {b.t: b.o for b in live}
    for fill in fills:  # at the open of the 5-minute bar after the decision, plus 2 bp of slippage
        assert abs(fill.price / Decimal(repr(opens[fill.ts])) - 1) == Decimal("0.0002")
    assert fake.order_posts == [], "the simulator sends nothing to Alpaca"


def test_replay_bars_into_the_alpaca_broker(
    btc_model: Path,
    market: tuple[FakeAlpaca, list[MinuteBar]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake, live = market
    data = tmp_path / "data"
    (data / "BTC").mkdir(parents=True)  # the replay reads {data_dir}/{SYMBOL}.csv: BTC/USD.csv
    write_btc_5m(ROWS[: TRAIN + 60], data / "BTC" / "USD.csv")
    replay = f'kind = "replay"\ndata_dir = "{data}"\nstart = "2022-01-28T00:00:00Z"\n'
    config = live_config(tmp_path, fake, btc_model, feed=replay, feed_kind="replay")
    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    minutes = iter(live)

    def hook(engine: Engine) -> None:  # the market moves on as the replay does: orders fill at Alpaca
        for _ in range(5):
            fake.publish("BTC/USD", next(minutes))
        time.sleep(0.05)

    cfg = load_config(config)
    with mock.patch.dict(os.environ, keyed_env()):
        asyncio.run(run_daemon(cfg, command="run", config_path=config, install_signals=False, on_batch=hook))
        assert fake.order_posts, "replayed bars, orders at Alpaca"
        asyncio.run(run_daemon(cfg, command="run", config_path=config, install_signals=False))  # settles
    fills_equal_the_fake(db_url, fake)
    books_equal_the_fake(config, fake, capsys)
