"""The newer limits one by one (absolute and net exposure, order rate, daily loss, stale data, price band,
minimum order, per-symbol rules), the daily reset across a time zone's midnight, sizing modes, and a
property test that drives the real RiskEngine, sizer, tracker and simulated broker over random paths."""

from __future__ import annotations

import asyncio
import math
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_risk import BASE_RISK, T0, decide, order, settings_, target, view

from bot.bars import Bar
from bot.brokers.sim import SimBroker, SimBrokerConfig
from bot.config import SizingSettings, parse_config
from bot.errors import ConfigError
from bot.ledger import Ledger
from bot.orders import OrderIntent, OrderUpdate, Side, client_order_id
from bot.risk import (
    BarContext,
    OrderCounter,
    OrderRequest,
    PortfolioView,
    RiskEngine,
    RiskOutcome,
    Sizer,
    StateSource,
    TradingState,
    TradingStateTracker,
    day_start,
    plan_order,
)

D = Decimal
HOUR = timedelta(hours=1)


def with_bar(request: OrderRequest, **fields: Any) -> OrderRequest:
    base: dict[str, Any] = {
        "now": T0 + HOUR,
        "close_time": T0 + HOUR,
        "interval": HOUR,
        "previous_ts": T0 - HOUR,
        "previous_close": request.price,
        "ts": T0,
    }
    bar = BarContext(**{**base, **fields})
    return OrderRequest(
        request.strategy, request.symbol, request.bar_ts, request.side, request.qty, request.price, bar
    )


def check(decision: Any, code: str) -> tuple[str, str]:
    found = next(c for c in decision.checks if c.code == code)
    return found.outcome.value, str(found.qty)


# ------------------------------------------------------------------------------------- position caps


def test_max_position_notional_and_per_symbol_quantity() -> None:
    # 30% of 100 000 allows 300; an absolute 12 000 allows 120 at 100.
    decision = decide(order(Side.BUY, 200), view(), max_position_notional=D(12_000))
    assert (decision.approved_qty, decision.reason) == (D(120), "max_position")
    per_symbol = decide(
        order(Side.BUY, 200), view(positions={"AAPL": 10}), symbols={"AAPL": {"max_position_qty": 50}}
    )
    assert (per_symbol.approved_qty, per_symbol.reason) == (D(40), "max_position")
    other = decide(
        order(Side.BUY, 200, symbol="MSFT"),
        view(marks={"MSFT": 100}),
        symbols={"AAPL": {"max_position_qty": 50}},
    )
    assert other.outcome is RiskOutcome.APPROVED


def test_max_net_exposure_resizes_and_lets_hedges_through() -> None:
    # Long 40 000 MSFT; net limit 50% of 100 000: 10 000 of room -> 100 AAPL.
    book = view(cash=10**6, positions={"MSFT": 4000}, marks={"AAPL": 100, "MSFT": 10})
    decision = decide(order(Side.BUY, 250), book, max_net_exposure=0.5, max_gross_exposure=3.0)
    assert (decision.approved_qty, decision.reason) == (D(100), "max_net_exposure")
    assert check(decision, "max_net_exposure") == ("resize", "100")
    # A short reduces net: allowed up to 40 000 + 50 000 of net on the other side, capped by position.
    hedge = decide(order(Side.SELL, 250), book, max_net_exposure=0.5, max_gross_exposure=3.0)
    assert hedge.outcome is RiskOutcome.APPROVED
    assert check(decide(order(Side.BUY, 10), book), "max_net_exposure") == ("pass", "10")  # off by default


# ------------------------------------------------------------------------------------- order rate


def test_order_rate_per_day_and_per_second() -> None:
    limits = {"max_orders_per_day": 5, "max_orders_per_second": 2}
    assert decide(order(Side.BUY, 10), view(orders_today=4, orders_this_second=1), **limits).outcome is (
        RiskOutcome.APPROVED
    )
    day = decide(order(Side.BUY, 10), view(orders_today=5), **limits)
    assert (day.outcome, day.reason) == (RiskOutcome.DENIED, "order_rate")
    second = decide(order(Side.SELL, 10), view(positions={"AAPL": 10}, orders_this_second=2), **limits)
    assert (second.reason, check(second, "order_rate")) == ("order_rate", ("deny", "0"))


def test_order_counter_counts_the_day_and_the_second() -> None:
    counter = OrderCounter()
    for ts in (T0 - timedelta(days=1), T0, T0 + timedelta(milliseconds=500), T0 + HOUR):
        counter.add(ts)
    assert counter.counts(T0 + timedelta(milliseconds=900), T0 - HOUR) == (3, 2)
    assert counter.counts(T0 + HOUR, T0 + HOUR) == (1, 1)


# ------------------------------------------------------------------------------------- daily loss


def test_daily_loss_denies_increases_and_allows_reductions() -> None:
    held = view(positions={"AAPL": 50}, daily_loss=0.05)
    buy = decide(order(Side.BUY, 10), held, daily_loss_limit=0.05)
    assert (buy.outcome, buy.reason) == (RiskOutcome.DENIED, "daily_loss")
    sell = decide(order(Side.SELL, 80), held, daily_loss_limit=0.05, max_position_fraction=1.0)
    assert (sell.approved_qty, check(sell, "daily_loss")) == (D(50), ("resize", "50"))
    assert decide(order(Side.BUY, 10), view(daily_loss=0.049), daily_loss_limit=0.05).outcome is (
        RiskOutcome.APPROVED
    )


def test_day_start_follows_the_zone_and_its_daylight_saving() -> None:
    winter = datetime(2024, 1, 10, 4, 59, tzinfo=UTC)  # 23:59 in New York
    assert day_start(winter, "America/New_York", "midnight") == datetime(2024, 1, 9, 5, tzinfo=UTC)
    assert day_start(winter + timedelta(minutes=1), "America/New_York", "midnight") == datetime(
        2024, 1, 10, 5, tzinfo=UTC
    )
    summer = datetime(2024, 7, 10, 13, 30, tzinfo=UTC)  # 09:30 EDT: the session opens
    assert day_start(summer, "America/New_York", "09:30") == summer
    assert day_start(summer - timedelta(seconds=1), "America/New_York", "09:30") == summer - timedelta(days=1)
    assert day_start(summer, "UTC", "midnight") == datetime(2024, 7, 10, tzinfo=UTC)


def test_daily_loss_halts_and_resets_at_the_zone_midnight() -> None:
    risk = settings_(daily_loss_limit=0.05, daily_reset_timezone="America/New_York", max_drawdown=0.5)
    t = TradingStateTracker("s", risk)
    evening = datetime(2024, 1, 9, 22, tzinfo=UTC)  # 17:00 New York, Jan 9
    assert t.update(D(1000), evening) == []
    assert t.day_equity == D(1000)
    assert t.update(D(1100), evening + HOUR) == []  # a gain; the day's start stays 1000
    [halt] = t.update(D(950), evening + 2 * HOUR)  # 5% below the day's start: 23:59 is still Jan 9
    assert (halt.state, halt.source, t.cause) == (TradingState.HALTED, StateSource.BREACH, "daily_loss")
    assert halt.reason.startswith("daily_loss: 5.00%")
    assert t.update(D(940), datetime(2024, 1, 10, 4, 59, tzinfo=UTC)) == []  # 23:59 New York
    # 00:00 New York (05:00 UTC): a new day starts at the equity last seen before it, and the halt lifts.
    [lift] = t.update(D(930), datetime(2024, 1, 10, 5, tzinfo=UTC))
    assert (lift.previous, lift.state, lift.source) == (
        TradingState.HALTED,
        TradingState.ACTIVE,
        StateSource.DAILY_RESET,
    )
    assert (t.day_equity, t.daily_loss(D(930))) == (D(940), pytest.approx(10 / 940))
    assert t.state is TradingState.ACTIVE


def test_the_daily_reset_does_not_lift_a_drawdown_or_operator_halt() -> None:
    t = TradingStateTracker("s", settings_(max_drawdown=0.1, daily_loss_limit=0.5))
    t.update(D(1000), T0)
    assert len(t.update(D(880), T0 + HOUR)) == 1
    assert t.cause == "max_drawdown"
    assert t.update(D(880), T0 + timedelta(days=1)) == []
    assert t.state is TradingState.HALTED
    # A resume re-bases the peak and the day at the current equity: it does not halt again at once.
    change = t.operator(TradingState.ACTIVE, "ok", T0 + timedelta(days=1), D(880))
    assert change is not None and change.source is StateSource.OPERATOR
    assert (t.peak, t.day_equity) == (D(880), D(880))
    assert t.update(D(870), T0 + timedelta(days=1, hours=1)) == []
    assert t.operator(TradingState.HALTED, "manual", T0 + timedelta(days=2), None) is not None
    assert t.update(D(870), T0 + timedelta(days=3)) == []
    assert (t.state, t.cause) == (TradingState.HALTED, "operator")


def test_a_stricter_breach_escalates_a_reducing_state() -> None:
    t = TradingStateTracker("s", settings_(max_drawdown=0.1, daily_loss_limit=0.05, on_breach="reduce"))
    t.update(D(1000), T0)
    [reduce] = t.update(D(940), T0 + HOUR)
    assert (reduce.state, t.cause) == (TradingState.REDUCING, "daily_loss")
    assert t.update(D(800), T0 + 2 * HOUR) == []  # REDUCING is what "reduce" breaches lead to


# ------------------------------------------------------------------------------------- stale data, band


def test_stale_data_denies_old_bars_and_bars_after_a_gap() -> None:
    fresh = with_bar(order(Side.BUY, 10), now=T0 + HOUR + timedelta(seconds=30))
    assert decide(fresh, view(), max_bar_age_seconds=60).outcome is RiskOutcome.APPROVED
    old = with_bar(order(Side.BUY, 10), now=T0 + HOUR + timedelta(seconds=61))
    decision = decide(old, view(), max_bar_age_seconds=60)
    assert (decision.reason, check(decision, "stale_data")) == ("stale_data", ("deny", "0"))
    gap = with_bar(order(Side.BUY, 10), previous_ts=T0 - 4 * HOUR)
    assert decide(gap, view(), max_gap_bars=3).reason == "stale_data"
    assert decide(gap, view(), max_gap_bars=4).outcome is RiskOutcome.APPROVED
    assert (
        decide(order(Side.BUY, 10), view(), max_bar_age_seconds=1).outcome is RiskOutcome.APPROVED
    )  # no bar


def test_price_band_denies_a_jump_from_the_last_close() -> None:
    jump = with_bar(order(Side.BUY, 10, price=100), previous_close=D(80))  # +25%
    decision = decide(jump, view(), price_band=0.2)
    assert (decision.outcome, decision.reason) == (RiskOutcome.DENIED, "price_band")
    assert decide(jump, view(), price_band=0.3).outcome is RiskOutcome.APPROVED
    assert decide(jump, view()).outcome is RiskOutcome.APPROVED  # off by default


# ------------------------------------------------------------------------------------- lots, minimums


def test_min_order_and_per_symbol_lots() -> None:
    small = decide(order(Side.BUY, 5), view(), min_qty=D(10))
    assert (small.reason, check(small, "min_order")) == ("min_order", ("deny", "0"))
    cheap = decide(order(Side.BUY, 5), view(), min_notional=D(600))
    assert cheap.reason == "min_order"
    lots = decide(order(Side.BUY, 57), view(), symbols={"AAPL": {"lot_size": 10}})
    assert (lots.approved_qty, lots.reason) == (D(50), "lot_size")


def test_market_rules_sit_between_the_symbol_table_and_the_globals() -> None:
    from bot.settings import SymbolRules

    engine = RiskEngine(
        settings_(symbols={"AAPL": {"min_qty": 1}}), {"AAPL": SymbolRules(lot_size=D(5), min_qty=D(20))}
    )
    rules = engine.rules("AAPL")
    assert (rules.lot_size, rules.min_qty) == (D(5), D(1))
    assert engine.evaluate(order(Side.BUY, 12), view()).approved_qty == D(10)


def test_price_precision_rounds_the_reference_price() -> None:
    risk = settings_(price_precision=1)
    engine = RiskEngine(risk)
    request = plan_order(target(1.0), view(), D("99.96"), risk, 0.0, rules=engine.rules("AAPL"))
    assert request is not None and request.price == D("100.0")


def test_reduce_only_flattens_while_halted_and_never_increases() -> None:
    halted = view(positions={"AAPL": 50}, state=TradingState.HALTED)
    flat = OrderRequest("s", "AAPL", T0, Side.SELL, D(50), D(100), reduce_only=True)
    assert decide(flat, halted).approved_qty == D(50)
    grow = OrderRequest("s", "AAPL", T0, Side.BUY, D(10), D(100), reduce_only=True)
    assert decide(grow, halted).reason == "trading_state"
    assert decide(grow, view(positions={"AAPL": 50})).reason == "trading_state"  # reduce-only when ACTIVE


# ------------------------------------------------------------------------------------- config


def _config(risk: str = "", sizing: str = "") -> dict[str, Any]:
    import tomllib

    repo = Path(__file__).resolve().parent.parent
    text = f"""
[feed]
data_dir = "{repo / "data" / "equities-1h"}"
[[strategies]]
name = "s"
symbols = ["SPY", "AAPL"]
model_dir = "models"
[strategies.risk]
{risk}
[strategies.sizing]
{sizing}
"""
    return tomllib.loads(text)


@pytest.mark.parametrize(
    ("risk", "sizing", "key", "reason"),
    [
        ('daily_reset_timezone = "Mars/Olympus"', "", "strategies[0].risk.daily_reset_timezone", "IANA"),
        ('daily_reset_time = "25:00"', "", "strategies[0].risk.daily_reset_time", "HH:MM"),
        ("daily_loss_limit = 1.5", "", "strategies[0].risk.daily_loss_limit", "less than 1"),
        ("max_orders_per_day = 0", "", "strategies[0].risk.max_orders_per_day", "greater than or equal"),
        ("price_band = -1", "", "strategies[0].risk.price_band", "greater than 0"),
        (
            "[strategies.risk.symbols.MSFT]\nlot_size = 1",
            "",
            "strategies[0].risk.symbols.MSFT",
            "not a symbol",
        ),
        (
            "qty_precision = 1\n[strategies.risk.symbols.AAPL]\nlot_size = 0.01",
            "",
            "strategies[0].risk.symbols.AAPL.lot_size",
            "more decimals",
        ),
        (
            "[strategies.risk.symbols.AAPL]\nlots = 1",
            "",
            "strategies[0].risk.symbols.AAPL.lots",
            "unknown key",
        ),
        ("", 'mode = "martingale"', "strategies[0].sizing.mode", "fixed_fraction"),
        ("", "kelly_cap = 2", "strategies[0].sizing.kelly_cap", "less than or equal to 1"),
    ],
)
def test_bad_risk_config_names_the_key(risk: str, sizing: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_config(risk, sizing), Path())
    assert info.value.key == key
    assert reason in info.value.reason


def test_bundled_config_is_valid_and_keeps_fixed_fraction() -> None:
    from bot.config import load_config

    config = load_config(Path(__file__).resolve().parent.parent / "config.toml")
    assert config.strategies[0].sizing.mode == "fixed_fraction"
    assert config.strategies[0].risk.daily_reset_timezone == "America/New_York"


# ------------------------------------------------------------------------------------- sizing


def test_sizing_modes() -> None:
    risk = settings_(max_position_fraction=0.5)
    fixed = Sizer(SizingSettings(fraction=0.2), risk, HOUR)
    assert fixed.full_fraction("AAPL", 0.001) == 0.2
    assert Sizer(SizingSettings(fraction=0.9), risk, HOUR).full_fraction("AAPL", 0.0) == 0.5  # capped

    vol = Sizer(
        SizingSettings(mode="vol_target", target_vol=0.05, vol_window=4, bars_per_year=100), risk, HOUR
    )
    assert vol.full_fraction("AAPL", 0.001) == 0.0  # no history: no position
    for close in (100.0, 101.0, 100.0, 101.0, 100.0):
        vol.observe_bar("AAPL", close, close)
    realized = vol.realized_vol("AAPL")
    assert realized is not None and realized == pytest.approx(math.sqrt(4 * math.log(1.01) ** 2 / 3 * 100))
    assert vol.full_fraction("AAPL", 0.001) == pytest.approx(0.05 / realized)

    kelly = Sizer(SizingSettings(mode="kelly", kelly_fraction=0.5, kelly_cap=0.4, error_window=3), risk, HOUR)
    for predicted, (open_, close) in ((0.0, (100.0, 101.0)), (0.01, (100.0, 100.0)), (0.0, (100.0, 99.0))):
        kelly.observe_forecast("AAPL", predicted)
        kelly.observe_bar("AAPL", open_, close)
    var = kelly.error_variance("AAPL")
    assert var is not None
    assert kelly.full_fraction("AAPL", 0.00005) == pytest.approx(0.5 * 0.00005 / var)
    assert kelly.full_fraction("AAPL", 0.05) == 0.4  # capped


def test_plan_order_uses_the_sized_fraction_and_keeps_the_band_on_the_maximum() -> None:
    request = plan_order(target(1.0), view(), D(100), settings_(), 0.05, full_fraction=0.1)
    assert request is not None and request.qty == D(100)  # 10% of 100 000 at 100
    # Band 5% of the 30 000 maximum = 1 500: a 10-unit change is skipped even with a small full position.
    assert (
        plan_order(target(1.0), view(positions={"AAPL": 90}), D(100), settings_(), 0.05, full_fraction=0.1)
        is None
    )


# ------------------------------------------------------------------------------------- properties

SEQUENCE_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SYMBOLS = ("AAPL", "MSFT")


@st.composite
def episodes(draw: st.DrawFn) -> dict[str, Any]:
    """Random limits, a random walk of prices and a forecast per bar and symbol, and operator actions."""
    steps = draw(st.integers(5, 40))
    return {
        "risk": {
            **BASE_RISK,
            "max_drawdown": draw(st.sampled_from([0.02, 0.05, 0.2])),
            "daily_loss_limit": draw(st.sampled_from([None, 0.01, 0.03])),
            "max_position_fraction": draw(st.sampled_from([0.1, 0.3, 0.6])),
            "max_position_notional": draw(st.sampled_from([None, D(20_000)])),
            "max_gross_exposure": draw(st.sampled_from([0.3, 0.8, 1.5])),
            "max_net_exposure": draw(st.sampled_from([None, 0.2, 0.5])),
            "max_order_notional": draw(st.sampled_from([D(5_000), D(50_000)])),
            "max_orders_per_day": draw(st.sampled_from([None, 3, 20])),
            "on_breach": draw(st.sampled_from(["halt", "reduce"])),
            "flatten_on_breach": draw(st.booleans()),
            "lot_size": draw(st.sampled_from([D(1), D("0.1")])),
        },
        "sizing": draw(st.sampled_from(["fixed_fraction", "vol_target", "kelly"])),
        "allow_short": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "steps": steps,
        "operator": draw(
            st.lists(st.sampled_from([None, None, None, "halt", "resume"]), min_size=steps, max_size=steps)
        ),
    }


def _simulate(episode: dict[str, Any]) -> None:
    rng = random.Random(episode["seed"])
    risk = settings_(**episode["risk"])
    sizing = SizingSettings(mode=episode["sizing"], vol_window=5, error_window=5, bars_per_year=1764)
    engine, sizer = RiskEngine(risk), Sizer(sizing, risk, HOUR)
    tracker = TradingStateTracker("s", risk)
    broker = SimBroker(SimBrokerConfig(starting_cash=D(100_000)))
    ledger = Ledger(D(100_000))
    prices = {s: rng.uniform(20, 500) for s in SYMBOLS}
    marks: dict[str, Decimal] = {}
    pending: dict[str, OrderIntent] = {}
    counter = OrderCounter()
    ts = T0
    for step in range(episode["steps"]):
        bars = []
        for symbol in SYMBOLS:
            open_ = prices[symbol]
            close = max(1.0, open_ * (1 + rng.gauss(0, 0.03)))
            prices[symbol] = close
            bars.append(
                Bar(
                    symbol,
                    ts,
                    round(open_, 2),
                    round(max(open_, close), 2),
                    round(min(open_, close), 2),
                    round(close, 2),
                    1000.0,
                )
            )
        broker.observe_bars(bars)
        for event in broker.events.drain():
            assert isinstance(event, OrderUpdate) and event.fill is not None
            ledger.apply(event.fill)
            pending.pop(event.fill.client_order_id)
        for bar in bars:
            marks[bar.symbol] = D(repr(bar.close))
            sizer.observe_bar(bar.symbol, bar.open, bar.close)
        equity = ledger.equity(marks)
        tracker.update(equity, ts + HOUR)
        action = episode["operator"][step]
        if action is not None:
            state = TradingState.HALTED if action == "halt" else TradingState.ACTIVE
            tracker.operator(state, action, ts + HOUR, equity)
        for sequence, bar in enumerate(bars):
            pend: dict[str, Decimal] = {}
            for intent in pending.values():
                pend[intent.symbol] = pend.get(intent.symbol, D(0)) + intent.side.sign * intent.qty
            view_ = PortfolioView(
                equity,
                ledger.cash,
                {s: p.qty for s, p in ledger.positions().items()},
                pend,
                marks,
                tracker.drawdown(equity),
                tracker.state,
                tracker.daily_loss(equity),
                *counter.counts(ts + HOUR, tracker.day_start),
            )
            forecast = rng.gauss(0, 0.003)
            sizer.observe_forecast(bar.symbol, forecast)
            weight = max(-1.0, min(1.0, forecast / 0.002))
            if not episode["allow_short"]:
                weight = max(0.0, weight)
            from bot.strategy import Prediction, Target

            prediction = Prediction("s", bar.symbol, bar.ts, forecast, 1, "t")
            full = sizer.full_fraction(bar.symbol, forecast)
            request = plan_order(
                Target("s", bar.symbol, bar.ts, weight, prediction),
                view_,
                marks[bar.symbol],
                risk,
                0.05,
                full_fraction=full,
            )
            if request is None:
                continue
            decision = engine.evaluate(request, view_)
            qty = decision.approved_qty
            if qty == 0:
                continue
            price = request.price
            current = view_.exposure(bar.symbol)
            new = current + request.side.sign * qty
            grows = abs(new) > abs(current) or new * current < 0
            # Nothing is bought while HALTED, nothing grows while REDUCING.
            assert tracker.state is not TradingState.HALTED
            if tracker.state is TradingState.REDUCING:
                assert not grows
            # No order over the notional limit; no position, gross or net exposure pushed over its limit.
            assert qty * price <= risk.max_order_notional
            position_limit = min(
                equity * D(repr(risk.max_position_fraction)), risk.max_position_notional or equity * 10
            )
            assert abs(new) * price <= position_limit or not grows
            gross_before = view_.gross_exposure()
            gross_after = gross_before + (abs(new) - abs(current)) * price
            assert gross_after <= equity * D(repr(risk.max_gross_exposure)) or gross_after <= gross_before
            if risk.max_net_exposure is not None:
                net_before = view_.net_exposure()
                net_after = net_before + request.side.sign * qty * price
                assert abs(net_after) <= equity * D(repr(risk.max_net_exposure)) or abs(net_after) <= abs(
                    net_before
                )
            if risk.max_orders_per_day is not None:
                assert view_.orders_today < risk.max_orders_per_day
            if request.side is Side.BUY and new > max(current, D(0)):
                assert qty * price <= ledger.cash - view_.pending_buy_notional()
            intent = OrderIntent(
                client_order_id("b", "s", bar.symbol, bar.ts, sequence),
                "s",
                bar.symbol,
                request.side,
                qty,
                bar.ts,
            )
            asyncio.run(broker.submit(intent))
            pending[intent.client_order_id] = intent
            counter.add(ts + HOUR)
        ts += HOUR
        # The ledger the limits were checked against is the one the fills build.
        assert ledger.cash == ledger.cash.quantize(D("1e-8"))


@SEQUENCE_SETTINGS
@given(episodes())
def test_property_random_sequences_never_break_a_limit(episode: dict[str, Any]) -> None:
    _simulate(episode)
