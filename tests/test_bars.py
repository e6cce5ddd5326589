"""The bar guard: every malformed bar is refused with its stable reason, and a refusal changes nothing."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from bot.bars import Bar, BarGuard, BarGuardConfig, RejectReason, parse_timeframe, utc

T0 = datetime(2024, 1, 2, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def bar(
    ts: datetime = T0,
    *,
    symbol: str = "AAPL",
    open: float = 100.0,  # mirrors the Bar field
    high: float = 101.0,
    low: float = 99.0,
    close: float = 100.5,
    volume: float = 1_000.0,
) -> Bar:
    return Bar(symbol, ts, open, high, low, close, volume)


def reason(guard: BarGuard, candidate: Bar) -> RejectReason | None:
    rejection = guard.check(candidate)
    if rejection is None:
        return None
    assert rejection.bar is candidate
    assert rejection.detail  # a human-readable explanation always comes with the code
    return rejection.reason


def test_good_bar_is_accepted_and_remembered() -> None:
    guard = BarGuard()
    assert guard.last_ts("AAPL") is None
    assert guard.check(bar()) is None
    assert guard.last_ts("AAPL") == T0
    assert guard.check(bar(T0 + HOUR)) is None
    assert guard.last_ts("AAPL") == T0 + HOUR


@pytest.mark.parametrize(
    "edge",
    [
        bar(open=99.0, close=101.0),  # open at the low, close at the high
        bar(open=100.0, high=100.0, low=100.0, close=100.0),  # a flat bar
        bar(volume=0.0),  # no trades is not an error
        bar(open=101.0 * (1 + 1e-7), close=99.0 - 101.0 * 1e-7),  # inside the rounding tolerance
    ],
    ids=["extremes", "flat", "zero-volume", "within-tolerance"],
)
def test_edge_bars_are_accepted(edge: Bar) -> None:
    assert BarGuard().check(edge) is None


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        (bar(open=math.nan), RejectReason.NOT_FINITE),
        (bar(high=math.inf), RejectReason.NOT_FINITE),
        (bar(low=-math.inf), RejectReason.NOT_FINITE),
        (bar(close=math.nan), RejectReason.NOT_FINITE),
        (bar(volume=math.nan), RejectReason.NOT_FINITE),
        (bar(volume=math.inf), RejectReason.NOT_FINITE),
        (bar(open=0.0, low=0.0), RejectReason.NON_POSITIVE_PRICE),
        (bar(low=-1.0), RejectReason.NON_POSITIVE_PRICE),
        (bar(open=-1.0, high=-1.0, low=-2.0, close=-1.5), RejectReason.NON_POSITIVE_PRICE),
        (bar(high=98.0, low=99.0, open=98.5, close=98.5), RejectReason.HIGH_BELOW_LOW),
        (bar(open=101.01), RejectReason.OUTSIDE_RANGE),
        (bar(open=98.99), RejectReason.OUTSIDE_RANGE),
        (bar(close=101.01), RejectReason.OUTSIDE_RANGE),
        (bar(close=98.99), RejectReason.OUTSIDE_RANGE),
        (bar(open=101.0 * (1 + 1e-5)), RejectReason.OUTSIDE_RANGE),  # beyond the 1e-6 tolerance
        (bar(volume=-1.0), RejectReason.NEGATIVE_VOLUME),
        (bar(ts=datetime(2024, 1, 2, 9, 0)), RejectReason.NAIVE_TIMESTAMP),  # naive
    ],
    ids=[
        "nan-open",
        "inf-high",
        "neg-inf-low",
        "nan-close",
        "nan-volume",
        "inf-volume",
        "zero-price",
        "negative-low",
        "all-negative",
        "high-below-low",
        "open-above-high",
        "open-below-low",
        "close-above-high",
        "close-below-low",
        "open-beyond-tolerance",
        "negative-volume",
        "naive-ts",
    ],
)
def test_malformed_bars_are_rejected_with_their_reason(bad: Bar, expected: RejectReason) -> None:
    guard = BarGuard()
    assert reason(guard, bad) is expected
    assert guard.last_ts(bad.symbol) is None  # nothing was remembered


def test_reason_codes_are_stable() -> None:
    # They are stored in alert rows: renaming one breaks every existing row.
    assert {r.name: r.value for r in RejectReason} == {
        "NOT_FINITE": "not_finite",
        "NON_POSITIVE_PRICE": "non_positive_price",
        "HIGH_BELOW_LOW": "high_below_low",
        "OUTSIDE_RANGE": "open_close_outside_range",
        "NEGATIVE_VOLUME": "negative_volume",
        "DUPLICATE": "duplicate_timestamp",
        "OUT_OF_ORDER": "out_of_order",
        "NAIVE_TIMESTAMP": "naive_timestamp",
        "FUTURE": "future_timestamp",
    }


def test_configured_tolerance_is_a_fraction_of_price() -> None:
    loose = BarGuard(BarGuardConfig(range_tolerance=0.01))
    assert loose.check(bar(open=101.0 * 1.009)) is None
    assert reason(loose, bar(T0 + HOUR, open=101.0 * 1.011)) is RejectReason.OUTSIDE_RANGE
    strict = BarGuard(BarGuardConfig(range_tolerance=0.0))
    assert reason(strict, bar(open=101.0 + 1e-9)) is RejectReason.OUTSIDE_RANGE


def test_duplicate_and_out_of_order_timestamps_are_rejected() -> None:
    guard = BarGuard()
    assert guard.check(bar(T0)) is None
    assert guard.check(bar(T0 + 2 * HOUR)) is None
    assert reason(guard, bar(T0 + 2 * HOUR)) is RejectReason.DUPLICATE
    assert reason(guard, bar(T0 + HOUR)) is RejectReason.OUT_OF_ORDER
    assert reason(guard, bar(T0)) is RejectReason.OUT_OF_ORDER
    assert guard.last_ts("AAPL") == T0 + 2 * HOUR
    assert guard.check(bar(T0 + 3 * HOUR)) is None


def test_same_instant_in_another_time_zone_is_a_duplicate() -> None:
    guard = BarGuard()
    assert guard.check(bar(T0)) is None
    new_york = timezone(timedelta(hours=-5))
    assert reason(guard, bar(T0.astimezone(new_york))) is RejectReason.DUPLICATE
    assert reason(guard, bar((T0 - HOUR).astimezone(new_york))) is RejectReason.OUT_OF_ORDER
    assert guard.check(bar((T0 + HOUR).astimezone(new_york))) is None


def test_each_symbol_has_its_own_timeline() -> None:
    guard = BarGuard()
    assert guard.check(bar(T0 + 5 * HOUR, symbol="AAPL")) is None
    # MSFT is behind AAPL, and that is fine: only its own history counts.
    assert guard.check(bar(T0, symbol="MSFT")) is None
    assert guard.check(bar(T0 + HOUR, symbol="MSFT")) is None
    assert reason(guard, bar(T0 + HOUR, symbol="MSFT")) is RejectReason.DUPLICATE
    assert reason(guard, bar(T0 + 4 * HOUR, symbol="AAPL")) is RejectReason.OUT_OF_ORDER
    assert guard.last_ts("AAPL") == T0 + 5 * HOUR
    assert guard.last_ts("MSFT") == T0 + HOUR


@pytest.mark.parametrize(
    "bad",
    [
        bar(T0 + 2 * HOUR, open=math.nan),
        bar(T0 + 2 * HOUR, low=-1.0),
        bar(T0 + 2 * HOUR, high=98.0, low=99.0),
        bar(T0 + 2 * HOUR, close=200.0),
        bar(T0 + 2 * HOUR, volume=-5.0),
        bar(datetime(2024, 1, 2, 11, 0)),  # naive
    ],
    ids=["nan", "negative", "high-below-low", "outside", "negative-volume", "naive"],
)
def test_rejected_bar_changes_no_state(bad: Bar) -> None:
    guard = BarGuard()
    assert guard.check(bar(T0)) is None
    assert guard.check(bad) is not None
    assert guard.last_ts("AAPL") == T0
    # The bad bar's timestamp was not taken: a good bar at that very time is still new.
    assert guard.check(bar(T0 + 2 * HOUR)) is None
    assert guard.last_ts("AAPL") == T0 + 2 * HOUR


def test_rejected_duplicate_changes_no_state() -> None:
    guard = BarGuard()
    assert guard.check(bar(T0 + HOUR)) is None
    assert reason(guard, bar(T0)) is RejectReason.OUT_OF_ORDER
    assert reason(guard, bar(T0 + HOUR)) is RejectReason.DUPLICATE
    assert guard.last_ts("AAPL") == T0 + HOUR
    assert guard.check(bar(T0 + 2 * HOUR)) is None


def test_seed_starts_from_a_known_bar() -> None:
    guard = BarGuard()
    guard.seed("AAPL", datetime(2024, 1, 2, 9, 0))  # naive is taken as UTC
    assert guard.last_ts("AAPL") == T0
    assert guard.last_ts("AAPL").tzinfo is UTC  # type: ignore[union-attr]
    assert reason(guard, bar(T0)) is RejectReason.DUPLICATE
    assert reason(guard, bar(T0 - HOUR)) is RejectReason.OUT_OF_ORDER
    assert guard.check(bar(T0 + HOUR)) is None
    assert guard.check(bar(T0 - HOUR, symbol="MSFT")) is None  # seeding AAPL says nothing about MSFT


def test_utc_normalizes_aware_and_naive() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert utc(datetime(2024, 1, 2, 11, 0, tzinfo=plus_two)) == T0
    assert utc(datetime(2024, 1, 2, 11, 0, tzinfo=plus_two)).tzinfo is UTC
    assert utc(datetime(2024, 1, 2, 9, 0)).tzinfo is UTC  # naive


def test_close_time_is_open_plus_timeframe() -> None:
    assert bar().close_time == T0 + HOUR
    assert replace(bar(), timeframe=timedelta(minutes=5)).close_time == T0 + timedelta(minutes=5)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1m", timedelta(minutes=1)),
        ("5m", timedelta(minutes=5)),
        ("15m", timedelta(minutes=15)),
        ("90m", timedelta(minutes=90)),
        ("1h", timedelta(hours=1)),
        ("4h", timedelta(hours=4)),
        ("1d", timedelta(days=1)),
        ("7d", timedelta(days=7)),
    ],
)
def test_parse_timeframe_good(text: str, expected: timedelta) -> None:
    assert parse_timeframe(text) == expected


BAD_TIMEFRAMES = ("", "m", "0m", "0h", "00d", "1", "1s", "1w", "1H", "1M", "h1", "-1h", "1.5h", "1hh")


@pytest.mark.parametrize("text", [*BAD_TIMEFRAMES, "1h1h", " 1h", "1h ", "1 h", "|"])
def test_parse_timeframe_bad(text: str) -> None:
    with pytest.raises(ValueError, match="is not like"):
        parse_timeframe(text)


def test_parse_timeframe_rejects_trailing_newline() -> None:
    with pytest.raises(ValueError, match="is not like"):
        parse_timeframe("1h\n")


def test_a_bar_that_opens_after_the_clock_and_one_interval_is_refused() -> None:
    now = T0 + 30 * timedelta(minutes=1)  # the venue's clock, or the host's for stored bars
    assert BarGuard.from_the_future(bar(T0 - HOUR), now) is None  # closed at T0: the usual case
    assert BarGuard.from_the_future(bar(T0 + HOUR), now) is None  # within one interval: clock skew
    rejection = BarGuard.from_the_future(bar(datetime(2099, 1, 26, tzinfo=UTC)), now)
    assert rejection is not None
    assert rejection.reason is RejectReason.FUTURE
    assert "2099-01-26" in rejection.detail
