"""The bar guard: every malformed bar is refused with its stable reason, and a refusal changes nothing."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.bars import Bar, BarGuard, BarGuardConfig, RejectReason, Verdict, parse_timeframe, utc
from bot.feeds.replay import load_csv

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
        "ABSURD": "absurd_value",
        "SPIKE": "price_spike",
        "UNCONFIRMED_JUMP": "unconfirmed_jump",
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


# ---- jumps: held until the next bar says what they were -------------------------------------------------


def level(ts: datetime, price: float, symbol: str = "AAPL") -> Bar:
    """A quiet bar around `price`."""
    return Bar(symbol, ts, price, price * 1.002, price * 0.998, price * 1.001, 1_000.0)


def reasons(verdict: Verdict) -> list[RejectReason]:
    return [r.reason for r in verdict.rejected]


def test_a_bad_tick_is_held_then_rejected_when_the_next_bar_does_not_confirm_it() -> None:
    guard = BarGuard()
    assert guard.take(level(T0, 100.0)).accepted
    held = guard.take(level(T0 + HOUR, 1000.0))  # self-consistent, at 10x the price
    assert held == Verdict()  # neither accepted nor rejected yet: nothing downstream sees it
    assert guard.last_ts("AAPL") == T0
    after = guard.take(level(T0 + 2 * HOUR, 100.2))
    assert reasons(after) == [RejectReason.UNCONFIRMED_JUMP]
    assert after.rejected[0].bar.ts == T0 + HOUR
    assert [b.ts for b in after.accepted] == [T0 + 2 * HOUR]
    assert after.jump is None
    assert guard.last_close("AAPL") == pytest.approx(100.2 * 1.001)


def test_a_confirmed_jump_at_a_split_ratio_is_a_split_and_releases_the_held_bar() -> None:
    # AAPL's 4:1 split of 2020-08-31 as the bundled data has it: close 499.23, then open 127.67.
    guard = BarGuard()
    guard.seed("AAPL", T0, 499.23)
    split_bar = Bar("AAPL", T0 + HOUR, 127.67, 128.74, 126.25, 128.04, 1e6)
    assert guard.take(split_bar) == Verdict()
    verdict = guard.take(level(T0 + 2 * HOUR, 128.5))
    assert [b.ts for b in verdict.accepted] == [T0 + HOUR, T0 + 2 * HOUR]
    assert verdict.jump is not None
    assert verdict.jump.split == Fraction(4)
    assert (verdict.jump.ts, verdict.jump.before, verdict.jump.after) == (T0 + HOUR, 499.23, 127.67)


def test_a_confirmed_crash_off_the_split_ratios_is_a_real_move() -> None:
    # AAPL 2000-09-29: 53.38 -> open 28.06 on a profit warning, near 1:2 but 5% off it.
    guard = BarGuard()
    guard.seed("AAPL", T0, 53.38)
    assert guard.take(Bar("AAPL", T0 + HOUR, 28.06, 29.13, 23.19, 27.94, 1e6)) == Verdict()
    verdict = guard.take(level(T0 + 2 * HOUR, 26.5))
    assert verdict.jump is not None and verdict.jump.split is None
    assert len(verdict.accepted) == 2


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"low": 10.59}, RejectReason.SPIKE),  # AAPL 2009-09-21: a low of 10.59 in a 185 hour
        ({"open": 159.58, "high": 159.58}, RejectReason.SPIKE),  # IBM 2002-12-23: a bad opening print
        ({"high": 1e300}, RejectReason.ABSURD),
        ({"volume": 1e300}, RejectReason.ABSURD),
    ],
    ids=["bad-low", "bad-open", "huge-high", "huge-volume"],
)
def test_spikes_and_absurd_values_are_rejected_at_once(
    values: dict[str, float], expected: RejectReason
) -> None:
    guard = BarGuard()
    guard.seed("AAPL", T0, 80.0)
    candidate = replace(bar(T0 + HOUR, open=80.0, high=81.0, low=79.0, close=80.5), **values)
    verdict = guard.take(candidate)
    assert reasons(verdict) == [expected]
    assert verdict.rejected[0].detail
    assert guard.last_ts("AAPL") == T0 and guard.last_close("AAPL") == 80.0


def test_an_absurd_bar_is_rejected_even_with_nothing_to_compare_it_with() -> None:
    assert reason(BarGuard(), bar(high=1e300)) is RejectReason.ABSURD
    assert reason(BarGuard(), bar(high=1e13, open=1e13, close=1e13, low=1e13)) is RejectReason.ABSURD
    first = BarGuard().take(bar(high=300.0))  # 3x the low inside a symbol's first bar
    assert reasons(first) == [RejectReason.ABSURD]


def test_confirm_bars_waits_for_as_many_bars_and_any_of_them_can_refuse() -> None:
    config = BarGuardConfig(confirm_bars=2)
    guard = BarGuard(config)
    guard.seed("AAPL", T0, 100.0)
    assert guard.take(level(T0 + HOUR, 50.0)) == Verdict()
    assert guard.take(level(T0 + 2 * HOUR, 50.5)) == Verdict()
    released = guard.take(level(T0 + 3 * HOUR, 50.2))
    assert len(released.accepted) == 3 and released.jump is not None
    assert released.jump.split == Fraction(2)

    guard = BarGuard(config)
    guard.seed("AAPL", T0, 100.0)
    guard.take(level(T0 + HOUR, 50.0))
    guard.take(level(T0 + 2 * HOUR, 50.5))
    back = guard.take(level(T0 + 3 * HOUR, 99.0))
    assert reasons(back) == [RejectReason.UNCONFIRMED_JUMP] * 2
    assert [b.ts for b in back.accepted] == [T0 + 3 * HOUR]


def test_a_repeat_of_a_held_bar_is_a_duplicate_and_jumps_can_be_turned_off() -> None:
    guard = BarGuard()
    guard.seed("AAPL", T0, 100.0)
    guard.take(level(T0 + HOUR, 1000.0))
    assert reasons(guard.take(level(T0 + HOUR, 1000.0))) == [RejectReason.DUPLICATE]
    loose = BarGuard(BarGuardConfig(jump_ratio=0))
    loose.seed("AAPL", T0, 100.0)
    assert loose.take(level(T0 + HOUR, 1000.0)).accepted


def test_a_jump_ratio_that_is_not_a_factor_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="above 1"):
        BarGuardConfig(jump_ratio=0.5)


def test_on_the_bundled_data_it_finds_the_splits_the_crash_and_the_bad_prints() -> None:
    """Every verdict on 23 years of raw hourly bars: AAPL's four splits and IBM's one at their ratios,
    AAPL's 2000 crash as a real move, and nine bad prints; nothing else is held back."""
    found = []
    for path in sorted((Path(__file__).resolve().parents[1] / "data" / "equities-1h").glob("*.csv")):
        bars, problems = load_csv(path, path.stem, HOUR)
        assert not problems
        guard = BarGuard()
        for candidate in bars:
            verdict = guard.take(candidate)
            found += [(r.bar.symbol, r.bar.ts.date().isoformat(), r.reason.value) for r in verdict.rejected]
            if verdict.jump is not None:
                split = str(verdict.jump.split) if verdict.jump.split else "move"
                found.append((verdict.jump.symbol, verdict.jump.ts.date().isoformat(), split))
            assert not verdict.gaps
    assert found == [
        ("AAPL", "1998-01-06", "price_spike"),
        ("AAPL", "2000-06-21", "2"),
        ("AAPL", "2000-09-29", "move"),
        ("AAPL", "2000-11-01", "price_spike"),
        ("AAPL", "2001-04-05", "price_spike"),
        ("AAPL", "2005-02-28", "2"),
        ("AAPL", "2009-09-21", "price_spike"),
        ("AAPL", "2010-08-31", "price_spike"),
        ("AAPL", "2011-01-03", "price_spike"),
        ("AAPL", "2014-06-09", "7"),
        ("AAPL", "2020-08-31", "4"),
        ("IBM", "1999-05-27", "2"),
        ("IBM", "2000-07-20", "price_spike"),
        ("IBM", "2000-07-20", "price_spike"),
        ("IBM", "2002-12-23", "price_spike"),
    ]
