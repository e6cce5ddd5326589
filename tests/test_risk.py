"""Risk: each pre-trade check on its own, the decision it adds up to, sizing, the trading state, and
properties that no approved order may break whatever the account looks like."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from bot.config import RiskSettings
from bot.orders import Side
from bot.risk import (
    CHECK_CODES,
    CheckOutcome,
    OrderRequest,
    PortfolioView,
    RiskDecision,
    RiskEngine,
    RiskOutcome,
    StateSource,
    TradingState,
    TradingStateChange,
    TradingStateTracker,
    plan_order,
)
from bot.risk.sizing import floor_lots
from bot.strategy import Prediction, Target

D = Decimal
T0 = datetime(2024, 1, 2, 9, 0, tzinfo=UTC)
CODES = [
    "lot_size",
    "trading_state",
    "max_position",
    "max_gross_exposure",
    "max_net_exposure",
    "max_order_notional",
    "cash",
    "order_rate",
    "max_drawdown",
    "daily_loss",
    "stale_data",
    "price_band",
    "min_order",
]

# Roomy defaults: with these, a 100-unit buy of AAPL at 100 passes every check.
BASE_RISK: dict[str, Any] = {
    "max_drawdown": 0.2,
    "max_position_fraction": 0.3,
    "max_gross_exposure": 1.0,
    "max_order_notional": D(50_000),
    "on_breach": "halt",
    "lot_size": D(1),
    "cash_buffer": 0.01,
}


def settings_(**overrides: Any) -> RiskSettings:
    return RiskSettings(**{**BASE_RISK, **overrides})


def view(
    *,
    equity: str | int = 100_000,
    cash: str | int = 100_000,
    positions: Mapping[str, str | int] | None = None,
    pending: Mapping[str, str | int] | None = None,
    marks: Mapping[str, str | int] | None = None,
    drawdown: float = 0.0,
    state: TradingState = TradingState.ACTIVE,
    daily_loss: float = 0.0,
    orders_today: int = 0,
    orders_this_second: int = 0,
) -> PortfolioView:
    return PortfolioView(
        equity=D(equity),
        cash=D(cash),
        positions={s: D(q) for s, q in (positions or {}).items()},
        pending={s: D(q) for s, q in (pending or {}).items()},
        marks={s: D(p) for s, p in (marks or {"AAPL": 100}).items()},
        drawdown=drawdown,
        state=state,
        daily_loss=daily_loss,
        orders_today=orders_today,
        orders_this_second=orders_this_second,
    )


def order(side: Side, qty: str | int, price: str | int = 100, symbol: str = "AAPL") -> OrderRequest:
    return OrderRequest("s", symbol, T0, side, D(qty), D(price))


def decide(request: OrderRequest, portfolio: PortfolioView, **overrides: Any) -> RiskDecision:
    return RiskEngine(settings_(**overrides)).evaluate(request, portfolio)


def outcomes(decision: RiskDecision) -> list[tuple[str, str, str]]:
    """(code, outcome, qty) of every check that ran, read back from the JSON that gets stored."""
    return [(c["code"], c["outcome"], c["qty"]) for c in json.loads(decision.checks_json())]


def passed(qty: str, codes: list[str] | None = None) -> list[tuple[str, str, str]]:
    return [(code, "pass", qty) for code in (codes or CODES)]


# ------------------------------------------------------------------------------------- the decision


def test_order_inside_every_limit_is_approved_and_every_check_is_recorded() -> None:
    decision = decide(order(Side.BUY, 100), view())
    assert decision.outcome is RiskOutcome.APPROVED
    assert decision.approved_qty == D(100)
    assert decision.reason is None
    assert decision.strategy == "s"
    assert decision.bar_ts == T0
    assert outcomes(decision) == passed("100")
    stored = json.loads(decision.checks_json())
    assert stored[1]["detail"] == "ACTIVE"
    assert tuple(CODES) == CHECK_CODES
    assert all(set(c) == {"code", "outcome", "qty", "detail"} for c in stored)


def test_reason_is_the_first_check_that_resized() -> None:
    # max_position allows 300, then max_order_notional 20 000 / 100 = 200.
    decision = decide(order(Side.BUY, 500), view(), max_order_notional=D(20_000))
    assert decision.outcome is RiskOutcome.RESIZED
    assert decision.approved_qty == D(200)
    assert decision.reason == "max_position"
    assert outcomes(decision) == [
        ("lot_size", "pass", "500"),
        ("trading_state", "pass", "500"),
        ("max_position", "resize", "300"),
        ("max_gross_exposure", "pass", "300"),
        ("max_net_exposure", "pass", "300"),
        ("max_order_notional", "resize", "200"),
        *passed("200", CODES[6:]),
    ]


def test_a_deny_kills_the_order_but_every_check_is_still_recorded() -> None:
    # Resized by max_position, then nothing is left for the cash check: denied, and the reason is cash.
    # The checks after it still run on the 300 that reached it, for the record.
    decision = decide(order(Side.BUY, 500), view(cash=0), max_orders_per_day=1, price_band=0.01)
    assert decision.outcome is RiskOutcome.DENIED
    assert decision.approved_qty == D(0)
    assert decision.reason == "cash"
    assert outcomes(decision)[5:8] == [
        ("max_order_notional", "pass", "300"),
        ("cash", "deny", "0"),
        ("order_rate", "pass", "300"),
    ]
    assert [c.code for c in decision.checks] == CODES
    assert [c.outcome for c in decision.checks][:3] == [
        CheckOutcome.PASS,
        CheckOutcome.PASS,
        CheckOutcome.RESIZE,
    ]
    # A second deny further down is recorded too; the reason stays the first.
    later = decide(order(Side.BUY, 500), view(cash=0, orders_today=1), max_orders_per_day=1)
    assert (later.reason, outcomes(later)[7]) == ("cash", ("order_rate", "deny", "0"))


def test_request_that_is_not_whole_lots_is_floored() -> None:
    decision = decide(order(Side.BUY, "2.5"), view())
    assert decision.approved_qty == D(2)
    assert decision.outcome is RiskOutcome.RESIZED


# ------------------------------------------------------------------------------------- trading state


@pytest.mark.parametrize(
    "request_",
    [order(Side.BUY, 10), order(Side.SELL, 10), order(Side.SELL, 50)],
    ids=["buy", "partial-reduce", "close"],
)
def test_halted_denies_everything(request_: OrderRequest) -> None:
    decision = decide(request_, view(positions={"AAPL": 50}, state=TradingState.HALTED))
    assert decision.outcome is RiskOutcome.DENIED
    assert decision.approved_qty == D(0)
    assert decision.reason == "trading_state"
    assert outcomes(decision)[1] == ("trading_state", "deny", "0")
    assert [code for code, verdict, _ in outcomes(decision) if verdict == "deny"] == ["trading_state"]


def test_reducing_denies_increases() -> None:
    long = view(positions={"AAPL": 50}, state=TradingState.REDUCING)
    assert decide(order(Side.BUY, 10), long).reason == "trading_state"
    assert decide(order(Side.BUY, 10), long).outcome is RiskOutcome.DENIED
    flat = view(state=TradingState.REDUCING)
    assert decide(order(Side.BUY, 10), flat).outcome is RiskOutcome.DENIED
    assert decide(order(Side.SELL, 10), flat).outcome is RiskOutcome.DENIED  # a new short is an increase
    short = view(positions={"AAPL": -20}, state=TradingState.REDUCING)
    assert decide(order(Side.SELL, 1), short).outcome is RiskOutcome.DENIED


def test_reducing_allows_reductions_but_caps_them_at_flat() -> None:
    long = view(positions={"AAPL": 50}, state=TradingState.REDUCING)
    partial = decide(order(Side.SELL, 30), long)
    assert (partial.outcome, partial.approved_qty) == (RiskOutcome.APPROVED, D(30))
    capped = decide(order(Side.SELL, 80), long)
    assert (capped.outcome, capped.approved_qty, capped.reason) == (
        RiskOutcome.RESIZED,
        D(50),
        "trading_state",
    )
    assert outcomes(capped)[1] == ("trading_state", "resize", "50")
    short = view(positions={"AAPL": -20}, state=TradingState.REDUCING)
    assert decide(order(Side.BUY, 30), short).approved_qty == D(20)


def test_reducing_counts_pending_orders() -> None:
    # 50 held, 30 already being sold: only 20 are left to sell.
    portfolio = view(positions={"AAPL": 50}, pending={"AAPL": -30}, state=TradingState.REDUCING)
    assert decide(order(Side.SELL, 50), portfolio).approved_qty == D(20)
    # Held 0 but a buy of 40 in flight: selling it back is a reduction.
    in_flight = view(pending={"AAPL": 40}, state=TradingState.REDUCING)
    assert decide(order(Side.SELL, 60), in_flight).approved_qty == D(40)


# ------------------------------------------------------------------------------------- max_drawdown


def test_max_drawdown_denies_increases_at_or_past_the_limit() -> None:
    for drawdown in (0.2, 0.35):
        decision = decide(order(Side.BUY, 10), view(positions={"AAPL": 50}, drawdown=drawdown))
        assert (decision.outcome, decision.reason) == (RiskOutcome.DENIED, "max_drawdown")
        assert outcomes(decision)[1] == ("trading_state", "pass", "10")
        assert outcomes(decision)[8] == ("max_drawdown", "deny", "0")
        assert decide(order(Side.SELL, 10), view(drawdown=drawdown)).reason == "max_drawdown"  # new short
    below = decide(order(Side.BUY, 10), view(positions={"AAPL": 50}, drawdown=0.19))
    assert below.outcome is RiskOutcome.APPROVED


def test_max_drawdown_allows_reductions() -> None:
    long = decide(order(Side.SELL, 20), view(positions={"AAPL": 50}, drawdown=0.3))
    assert (long.outcome, long.approved_qty) == (RiskOutcome.APPROVED, D(20))
    short = decide(order(Side.BUY, 20), view(positions={"AAPL": -50}, drawdown=0.3))
    assert (short.outcome, short.approved_qty) == (RiskOutcome.APPROVED, D(20))
    flat = decide(order(Side.SELL, 50), view(positions={"AAPL": 50}, drawdown=0.3))
    assert (flat.outcome, flat.approved_qty) == (RiskOutcome.APPROVED, D(50))


def test_max_drawdown_caps_a_flip_at_flat() -> None:
    decision = decide(
        order(Side.SELL, 150), view(positions={"AAPL": 50}, drawdown=0.3), max_position_fraction=1.0
    )
    assert decision.approved_qty == D(50)


# ------------------------------------------------------------------------------------- max_position


def test_max_position_resizes_to_the_limit() -> None:
    # 30% of 100 000 at 100 = 300 units; 250 held -> 50 more.
    decision = decide(order(Side.BUY, 100), view(positions={"AAPL": 250}))
    assert (decision.outcome, decision.approved_qty, decision.reason) == (
        RiskOutcome.RESIZED,
        D(50),
        "max_position",
    )
    assert outcomes(decision)[2] == ("max_position", "resize", "50")
    # Shorts are limited the same way.
    assert decide(order(Side.SELL, 400), view()).approved_qty == D(300)


def test_max_position_limit_is_in_whole_lots() -> None:
    # 30 000 / 70 = 428.57 -> 420 in lots of 10.
    decision = decide(order(Side.BUY, 1000, price=70), view(marks={"AAPL": 70}), lot_size=D(10))
    assert (decision.approved_qty, decision.reason) == (D(420), "max_position")
    fractional = decide(order(Side.BUY, 1000, price=70), view(marks={"AAPL": 70}), lot_size=D("0.25"))
    assert fractional.approved_qty == D("428.5")


def test_max_position_counts_pending_orders() -> None:
    decision = decide(order(Side.BUY, 100), view(positions={"AAPL": 200}, pending={"AAPL": 80}))
    assert decision.approved_qty == D(20)
    denied = decide(order(Side.BUY, 1), view(positions={"AAPL": 200}, pending={"AAPL": 100}))
    assert (denied.outcome, denied.reason) == (RiskOutcome.DENIED, "max_position")


def test_max_position_always_allows_reducing_an_oversized_position() -> None:
    oversized = view(positions={"AAPL": 400})  # equity fell: 400 > 300
    assert decide(order(Side.BUY, 1), oversized).reason == "max_position"
    reduce = decide(order(Side.SELL, 50), oversized)
    assert (reduce.outcome, reduce.approved_qty) == (RiskOutcome.APPROVED, D(50))


def test_max_position_flip_may_not_exceed_the_limit_on_the_other_side() -> None:
    decision = decide(
        order(Side.SELL, 400),
        view(positions={"AAPL": 200}, cash=1_000_000),
        max_position_fraction=0.1,
        max_order_notional=D(10**7),
    )
    assert decision.approved_qty == D(300)


# ------------------------------------------------------------------------------------- gross exposure


def test_max_gross_exposure_limits_the_whole_book() -> None:
    # Short 8 000 MSFT at 10 = 80 000 gross; the limit is 100 000, so AAPL gets 20 000 / 100 = 200.
    portfolio = view(cash=180_000, positions={"MSFT": -8000}, marks={"AAPL": 100, "MSFT": 10})
    decision = decide(order(Side.BUY, 250), portfolio)
    assert (decision.outcome, decision.approved_qty, decision.reason) == (
        RiskOutcome.RESIZED,
        D(200),
        "max_gross_exposure",
    )
    assert outcomes(decision)[3] == ("max_gross_exposure", "resize", "200")


def test_max_gross_exposure_counts_this_symbol_and_pending_orders() -> None:
    # AAPL 100 held + 50 pending (15 000) and MSFT 6 000 * 10: gross 75 000 of 100 000 -> 250 more AAPL.
    portfolio = view(
        positions={"AAPL": 100, "MSFT": 6000},
        pending={"AAPL": 50},
        marks={"AAPL": 100, "MSFT": 10},
        cash=10**6,
    )
    decision = decide(order(Side.BUY, 400), portfolio, max_position_fraction=1.0)
    assert (decision.approved_qty, decision.reason) == (D(250), "max_gross_exposure")
    # Reducing is allowed even with the book full.
    full = view(positions={"MSFT": 10_000}, marks={"AAPL": 100, "MSFT": 10}, cash=10**6)
    assert decide(order(Side.BUY, 1), full).reason == "max_gross_exposure"
    assert decide(order(Side.SELL, 5, price=10, symbol="MSFT"), full).outcome is RiskOutcome.APPROVED


# ------------------------------------------------------------------------------------- order notional


def test_max_order_notional() -> None:
    decision = decide(order(Side.BUY, 80), view(), max_order_notional=D(5000))
    assert (decision.approved_qty, decision.reason) == (D(50), "max_order_notional")
    assert outcomes(decision)[5] == ("max_order_notional", "resize", "50")
    # 5 000 / 30 = 166.67 -> 166 units, or 160 in lots of 10.
    assert (
        decide(order(Side.BUY, 300, 30), view(marks={"AAPL": 30}), max_order_notional=D(5000)).approved_qty
        == 166
    )
    tens = decide(
        order(Side.SELL, 300, 30), view(marks={"AAPL": 30}), max_order_notional=D(5000), lot_size=D(10)
    )
    assert tens.approved_qty == D(160)
    # It limits reductions too: no single order may be bigger.
    assert (
        decide(order(Side.SELL, 80), view(positions={"AAPL": 80}), max_order_notional=D(5000)).approved_qty
        == 50
    )


# ------------------------------------------------------------------------------------- cash


def test_cash_limits_buys_with_a_buffer() -> None:
    # 10 100 / (100 * 1.01) = exactly 100.
    assert decide(order(Side.BUY, 100), view(cash=10_100)).outcome is RiskOutcome.APPROVED
    decision = decide(order(Side.BUY, 101), view(cash=10_100))
    assert (decision.approved_qty, decision.reason) == (D(100), "cash")
    assert (decision.checks[6].code, decision.checks[6].outcome) == ("cash", CheckOutcome.RESIZE)
    assert decision.checks[6].qty == D(100)


def test_resized_quantities_are_written_in_plain_notation() -> None:
    cash = decide(order(Side.BUY, 101), view(cash=10_100))
    notional = decide(
        order(Side.BUY, 30_000, "2.5"),
        view(marks={"AAPL": "2.5"}),
        lot_size=D("0.01"),
        max_position_fraction=1.0,
    )
    assert (cash.approved_qty, notional.approved_qty) == (D(100), D(20_000))
    for decision in (cash, notional):
        assert "E" not in str(decision.approved_qty)
        assert all("E" not in qty for _, _, qty in outcomes(decision))


def test_cash_subtracts_pending_buys_but_not_pending_sells() -> None:
    # 10 000 cash, 5 000 promised to a pending AAPL buy: 5 000 / 101 = 49.5 -> 49.
    portfolio = view(cash=10_000, pending={"AAPL": 50, "MSFT": -500}, marks={"AAPL": 100, "MSFT": 10})
    decision = decide(order(Side.BUY, 80), portfolio)
    assert (decision.approved_qty, decision.reason) == (D(49), "cash")
    # A pending buy of another symbol takes the same cash.
    other = view(cash=10_000, pending={"MSFT": 500}, marks={"AAPL": 100, "MSFT": 10})
    assert decide(order(Side.BUY, 80), other).approved_qty == D(49)
    broke = view(cash=10_000, pending={"MSFT": 1000}, marks={"AAPL": 100, "MSFT": 10})
    assert decide(order(Side.BUY, 1), broke).reason == "cash"


def test_cash_lets_a_long_be_sold_without_cash() -> None:
    decision = decide(order(Side.SELL, 30), view(cash=0, positions={"AAPL": 30}))
    assert decision.outcome is RiskOutcome.APPROVED
    # Selling past flat opens a short, which needs cash room: with none, only the long is sold.
    past_flat = decide(order(Side.SELL, 50), view(cash=0, positions={"AAPL": 30}))
    assert (past_flat.approved_qty, past_flat.reason) == (D(30), "cash")
    assert decide(order(Side.SELL, 10), view(cash=0)).reason == "cash"


# ------------------------------------------------------------------------------------- plan_order


def target(weight: float, symbol: str = "AAPL") -> Target:
    prediction = Prediction("s", symbol, T0, 0.001, 1, "v1")
    return Target("s", symbol, T0, weight, prediction)


def plan(
    weight: float, portfolio: PortfolioView | None = None, price: str = "100", band: float = 0.05, **risk: Any
) -> OrderRequest | None:
    return plan_order(target(weight), portfolio or view(), D(price), settings_(**risk), band)


def test_plan_order_turns_a_weight_into_lots() -> None:
    # 0.5 of 30% of 100 000 at 100 = 150 units.
    assert plan(0.5) == OrderRequest("s", "AAPL", T0, Side.BUY, D(150), D(100))
    assert plan(1.0) == OrderRequest("s", "AAPL", T0, Side.BUY, D(300), D(100))
    # 15 000 / 70 = 214.3 -> 210 in lots of 10, rounded toward zero on both sides.
    assert plan(0.5, view(marks={"AAPL": 70}), price="70", lot_size=D(10)) == OrderRequest(
        "s", "AAPL", T0, Side.BUY, D(210), D(70)
    )
    assert plan(-0.5, view(marks={"AAPL": 70}), price="70", lot_size=D(10)) == OrderRequest(
        "s", "AAPL", T0, Side.SELL, D(210), D(70)
    )


def test_plan_order_moves_from_the_current_exposure_including_pending() -> None:
    assert plan(0.5, view(positions={"AAPL": 100}, pending={"AAPL": 20})) == OrderRequest(
        "s", "AAPL", T0, Side.BUY, D(30), D(100)
    )
    # Through zero in one order.
    assert plan(-0.5, view(positions={"AAPL": 100})) == OrderRequest(
        "s", "AAPL", T0, Side.SELL, D(250), D(100)
    )
    assert plan(0.5, view(positions={"AAPL": 150})) is None  # already there


def test_plan_order_rebalance_band_skips_small_changes() -> None:
    # Band 5% of the 30 000 maximum = 1 500: a change of 10 units (1 000) is skipped, 15 units (1 500) is not.
    assert plan(0.5, view(positions={"AAPL": 140})) is None
    assert plan(0.5, view(positions={"AAPL": 160})) is None
    assert plan(0.5, view(positions={"AAPL": 135})) == OrderRequest("s", "AAPL", T0, Side.BUY, D(15), D(100))
    assert plan(0.5, view(positions={"AAPL": 140}), band=0.0) == OrderRequest(
        "s", "AAPL", T0, Side.BUY, D(10), D(100)
    )


def test_plan_order_always_allows_closing_to_flat() -> None:
    # 10 units is far inside the band, but going flat is never skipped.
    assert plan(0.0, view(positions={"AAPL": 10})) == OrderRequest("s", "AAPL", T0, Side.SELL, D(10), D(100))
    assert plan(0.0, view(positions={"AAPL": -3})) == OrderRequest("s", "AAPL", T0, Side.BUY, D(3), D(100))
    # A weight too small for one lot is flat as well.
    assert plan(0.001, view(positions={"AAPL": 5}), band=0.5) == OrderRequest(
        "s", "AAPL", T0, Side.SELL, D(5), D(100)
    )
    assert plan(0.0) is None  # flat already


# ------------------------------------------------------------------------------------- state tracker


def tracker(on_breach: str = "halt", **kwargs: Any) -> TradingStateTracker:
    return TradingStateTracker("s", settings_(on_breach=on_breach), **kwargs)


def test_tracker_follows_the_peak() -> None:
    t = tracker()
    assert t.peak is None
    assert t.drawdown(D(50)) == 0.0
    assert t.update(D(100), T0) == []
    assert t.peak == D(100)
    assert t.update(D(110), T0) == []
    assert t.update(D(105), T0) == []
    assert t.peak == D(110)
    assert t.drawdown(D(99)) == pytest.approx(0.1, abs=1e-15)
    assert t.drawdown(D(120)) == 0.0  # above the peak is no drawdown


@pytest.mark.parametrize(
    ("on_breach", "expected"), [("halt", TradingState.HALTED), ("reduce", TradingState.REDUCING)]
)
def test_tracker_breaches_at_the_first_equity_at_or_past_the_limit(
    on_breach: str, expected: TradingState
) -> None:
    t = tracker(on_breach)
    ts = [T0 + timedelta(hours=i) for i in range(5)]
    assert t.update(D(100), ts[0]) == []
    assert t.update(D(120), ts[1]) == []
    assert t.update(D("96.01"), ts[2]) == []  # 19.99% below 120
    assert t.state is TradingState.ACTIVE
    [change] = t.update(D(96), ts[3])  # exactly 20%
    assert (change.scope, change.previous, change.state, change.ts) == (
        "s",
        TradingState.ACTIVE,
        expected,
        ts[3],
    )
    assert change.reason.startswith("max_drawdown: 20.00% from peak 120")
    assert (t.state, t.reason, t.cause) == (expected, change.reason, "max_drawdown")
    assert (change.source, change.equity) == (StateSource.BREACH, D(96))
    assert t.update(D(90), ts[4]) == []  # already breached: no second change


def test_tracker_does_not_resume_when_equity_recovers() -> None:
    t = tracker()
    t.update(D(100), T0)
    assert t.update(D(70), T0) != []
    assert t.update(D(200), T0) == []
    assert t.state is TradingState.HALTED
    assert t.peak == D(200)


def test_operator_changes_once_and_breach_fires_again_after_a_resume_without_equity() -> None:
    t = tracker()
    t.update(D(100), T0)
    t.update(D(70), T0)
    assert t.operator(TradingState.HALTED, "operator", T0, None) is None  # unchanged
    resumed = t.operator(TradingState.ACTIVE, "operator resume", T0 + timedelta(hours=1), None)
    assert resumed == TradingStateChange(
        "s",
        TradingState.HALTED,
        TradingState.ACTIVE,
        "operator resume",
        T0 + timedelta(hours=1),
        StateSource.OPERATOR,
    )
    assert (t.state, t.reason, t.cause) == (TradingState.ACTIVE, "operator resume", None)
    [again] = t.update(D(75), T0 + timedelta(hours=2))  # still 25% below the peak of 100
    assert again.state is TradingState.HALTED


def test_tracker_restored_from_saved_state() -> None:
    t = tracker("reduce", state=TradingState.REDUCING, peak=D(1000), reason="saved")
    assert t.drawdown(D(900)) == pytest.approx(0.1, abs=1e-15)
    assert t.update(D(500), T0) == []  # already REDUCING: nothing to do
    assert (t.state, t.peak, t.reason) == (TradingState.REDUCING, D(1000), "saved")


# ------------------------------------------------------------------------------------- properties

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LOTS = [D(1), D(10), D("0.01"), D("0.5")]


@dataclass(frozen=True)
class Scenario:
    """A random account, limits, and an order for AAPL (MSFT is the rest of the book)."""

    risk: RiskSettings
    view: PortfolioView
    request: OrderRequest


def _decimal(draw: st.DrawFn, low: int, high: int, places: int = 2) -> Decimal:
    return D(draw(st.integers(low, high))).scaleb(-places)


def _fraction(draw: st.DrawFn, low: float, high: float) -> float:
    return round(draw(st.floats(low, high, allow_nan=False)), 3)


def _lots(
    draw: st.DrawFn, equity: Decimal, price: Decimal, lot: Decimal, *, low: float, high: float
) -> Decimal:
    """A signed whole-lot quantity worth between low and high times equity."""
    share = D(repr(_fraction(draw, low, high)))
    qty = floor_lots(abs(share) * equity / price, lot)
    return qty if share >= 0 else -qty


def _account(draw: st.DrawFn) -> tuple[RiskSettings, PortfolioView, Decimal]:
    """Mostly an ACTIVE account inside its limits, so that most orders get through some checks; sometimes
    a stressed one (oversized positions, no cash, a drawdown, REDUCING or HALTED)."""
    lot = draw(st.sampled_from(LOTS))
    price = _decimal(draw, 1, 100_000)
    msft_price = _decimal(draw, 1, 100_000)
    equity = _decimal(draw, 100_000, 100_000_000)
    risk = RiskSettings(
        max_drawdown=draw(st.sampled_from([0.1, 0.2, 0.3])),
        max_position_fraction=max(0.01, _fraction(draw, 0.01, 1.0)),
        max_gross_exposure=max(0.1, _fraction(draw, 0.1, 3.0)),
        max_order_notional=max(D(1), equity * D(repr(_fraction(draw, 0.001, 2.0)))),
        on_breach=draw(st.sampled_from(["halt", "reduce"])),
        lot_size=lot,
        cash_buffer=_fraction(draw, 0.0, 0.05),
    )
    stressed = draw(st.booleans())
    reach = 1.5 if stressed else 0.4
    positions = {
        "AAPL": _lots(draw, equity, price, lot, low=-reach, high=reach),
        "MSFT": _lots(draw, equity, msft_price, lot, low=-reach, high=reach),
    }
    pending = {
        "AAPL": _lots(draw, equity, price, lot, low=-reach / 3, high=reach / 3),
        "MSFT": _lots(draw, equity, msft_price, lot, low=-reach / 3, high=reach / 3),
    }
    states = list(TradingState) if stressed else [TradingState.ACTIVE]
    portfolio = PortfolioView(
        equity=equity,
        cash=equity * D(repr(_fraction(draw, 0.0, 2.0))),
        positions=positions,
        pending=pending,
        marks={"AAPL": price, "MSFT": msft_price},
        drawdown=_fraction(draw, 0.0, 0.6 if stressed else 0.09),
        state=draw(st.sampled_from(states)),
    )
    return risk, portfolio, price


@st.composite
def planned(draw: st.DrawFn) -> Scenario:
    """An order the strategy would send: plan_order on a random target weight."""
    risk, portfolio, price = _account(draw)
    weight = _fraction(draw, -1.0, 1.0)
    band = _fraction(draw, 0.0, 0.2)
    request = plan_order(target(weight), portfolio, price, risk, band)
    if request is None:  # inside the band: make it a plain close so every example tests an order
        request = plan_order(target(0.0), portfolio, price, risk, band)
    for fallback in (1.0, -1.0):  # flat or at the target already: go to full size without the band
        request = request or plan_order(target(fallback), portfolio, price, risk, 0.0)
    assume(request is not None)  # only when the limit is under one lot and the position is flat
    assert request is not None
    return Scenario(risk, portfolio, request)


@st.composite
def arbitrary(draw: st.DrawFn) -> Scenario:
    """Any quantity in either direction, up to twice equity; whole lots, or now and then not."""
    risk, portfolio, price = _account(draw)
    side = draw(st.sampled_from(list(Side)))
    qty = D(repr(_fraction(draw, 0.001, 2.0))) * portfolio.equity / price
    if draw(st.integers(0, 4)):
        qty = max(risk.lot_size, floor_lots(qty, risk.lot_size))
    return Scenario(risk, portfolio, OrderRequest("s", "AAPL", T0, side, qty, price))


@dataclass(frozen=True)
class Result:
    scenario: Scenario
    decision: RiskDecision
    current: Decimal  # AAPL exposure before the order, pending included
    new: Decimal  # ... and after it
    price: Decimal

    @property
    def qty(self) -> Decimal:
        return self.decision.approved_qty

    @property
    def increases(self) -> bool:
        return abs(self.new) > abs(self.current) or self.new * self.current < 0


def run(scenario: Scenario) -> Result:
    request = scenario.request
    decision = RiskEngine(scenario.risk).evaluate(request, scenario.view)
    event(f"{decision.outcome.value} ({decision.reason})")
    current = scenario.view.exposure("AAPL")
    return Result(
        scenario, decision, current, current + request.side.sign * decision.approved_qty, request.price
    )


def assert_consistent(result: Result) -> None:
    """Outcome, reason and the check list agree with each other and with the quantity."""
    decision, request = result.decision, result.scenario.request
    assert D(0) <= decision.approved_qty <= request.qty
    assert [c.code for c in decision.checks] == CODES  # every check, every order, in order
    denied = [c.code for c in decision.checks if c.outcome is CheckOutcome.DENY]
    if decision.outcome is RiskOutcome.DENIED:
        assert decision.approved_qty == 0
        assert decision.reason == denied[0]
    else:
        assert denied == []
        assert decision.checks[-1].qty == decision.approved_qty
        resized = [c.code for c in decision.checks if c.outcome is CheckOutcome.RESIZE]
        if decision.outcome is RiskOutcome.APPROVED:
            assert decision.approved_qty == request.qty
            assert (resized, decision.reason) == ([], None)
        else:
            assert decision.approved_qty < request.qty
            assert decision.reason == resized[0]
    assert len(json.loads(decision.checks_json())) == len(decision.checks)


def assert_limits(result: Result) -> None:
    """(ii)-(v) and the gross limit, for any approved order."""
    risk, portfolio = result.scenario.risk, result.scenario.view
    qty, price = result.qty, result.price
    if qty == 0:
        return
    # (ii) no single order is bigger than the notional limit
    assert qty * price <= risk.max_order_notional
    # (iii) whole lots
    assert qty % risk.lot_size == 0
    # (iv) nothing while HALTED; only reductions, down to flat at most, while REDUCING
    assert portfolio.state is not TradingState.HALTED
    if portfolio.state is TradingState.REDUCING:
        assert not result.increases
        assert abs(result.new) < abs(result.current)
    # (v) a buy that adds to a long is paid for by cash not already promised to pending buys
    if result.scenario.request.side is Side.BUY and result.new > max(result.current, D(0)):
        free = portfolio.cash - portfolio.pending_buy_notional()
        assert qty * price * (1 + D(repr(risk.cash_buffer))) <= free
    # gross exposure never grows past its limit
    gross_before = portfolio.gross_exposure()
    gross_after = gross_before + (abs(result.new) - abs(result.current)) * price
    assert gross_after <= portfolio.equity * D(repr(risk.max_gross_exposure)) or gross_after <= gross_before


def assert_position_limit(result: Result) -> None:
    """(i) the position ends inside its limit, unless the order shrinks it."""
    limit = result.scenario.view.equity * D(repr(result.scenario.risk.max_position_fraction))
    if result.qty > 0:
        assert abs(result.new) * result.price <= limit or abs(result.new) < abs(result.current)


@PROPERTY_SETTINGS
@given(planned())
def test_property_planned_orders_respect_every_limit(scenario: Scenario) -> None:
    result = run(scenario)
    assert_consistent(result)
    assert_limits(result)
    assert_position_limit(result)


@PROPERTY_SETTINGS
@given(arbitrary())
def test_property_any_requested_quantity_respects_limits(scenario: Scenario) -> None:
    result = run(scenario)
    assert_consistent(result)
    assert_limits(result)
    # The position limit in its weak form: over the limit only if the position did not grow (see below).
    limit = scenario.view.equity * D(repr(scenario.risk.max_position_fraction))
    if result.qty > 0:
        assert abs(result.new) * result.price <= limit or abs(result.new) <= abs(result.current)


FLIP = Scenario(
    RiskSettings(**{**BASE_RISK, "max_position_fraction": 0.1, "max_order_notional": D(10**7)}),
    view(positions={"AAPL": 200}, cash=1_000_000),
    order(Side.SELL, 400),
)


@PROPERTY_SETTINGS
@example(FLIP)
@given(arbitrary())
def test_property_any_requested_quantity_respects_the_position_limit(scenario: Scenario) -> None:
    assert_position_limit(run(scenario))


def test_a_request_in_partial_lots_is_rounded_down_and_says_so() -> None:
    decision = decide(order(Side.BUY, "10.7"), view())
    assert (decision.outcome, decision.approved_qty, decision.reason) == (
        RiskOutcome.RESIZED,
        D(10),
        "lot_size",
    )
    assert outcomes(decision)[0] == ("lot_size", "resize", "10")
    dust = decide(order(Side.SELL, "0.4"), view(positions={"AAPL": "0.4"}))
    assert (dust.outcome, dust.reason, len(dust.checks)) == (RiskOutcome.DENIED, "lot_size", len(CODES))
