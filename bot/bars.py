"""The Bar value and the BarGuard, the first stage of the bar path: nothing malformed or implausible gets
past it, to the broker, the marks or the features.

Beyond the checks of one bar on its own, the guard judges each price against the symbol's last accepted
close. A bar that moves beyond `jump_ratio` from it is held until the next bars say what it was: a new
level they confirm (a split, or a real crash) is released with a `Jump`, one they do not is rejected as a
bad tick. A bar whose close stays in the band while another of its prices leaves it is a spike: rejected
at once, since it cannot be the start of a new level."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from fractions import Fraction
from typing import Annotated

from pydantic import Field, field_validator

from bot.settings import Section

_TIMEFRAME = re.compile(r"(\d+)(m|h|d)")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def parse_timeframe(text: str) -> timedelta:
    """'1m', '5m', '1h', '1d' -> timedelta; ValueError on anything else."""
    match = _TIMEFRAME.fullmatch(text)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"timeframe {text!r} is not like '1m', '5m', '1h' or '1d'")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def utc(ts: datetime) -> datetime:
    """The same instant as an aware UTC datetime; naive input is taken to be UTC already."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Bar:
    """One OHLCV bar. `ts` is the bar's OPEN time in UTC; a decision may use it only after `close_time`."""

    symbol: str
    ts: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float
    timeframe: timedelta = field(default=timedelta(hours=1))

    @property
    def close_time(self) -> datetime:
        """When the bar closed and became usable."""
        return self.ts + self.timeframe


class RejectReason(StrEnum):
    """Why a bar was refused. Stable codes: they are stored in alert rows."""

    NOT_FINITE = "not_finite"
    NON_POSITIVE_PRICE = "non_positive_price"
    HIGH_BELOW_LOW = "high_below_low"
    OUTSIDE_RANGE = "open_close_outside_range"
    NEGATIVE_VOLUME = "negative_volume"
    DUPLICATE = "duplicate_timestamp"
    OUT_OF_ORDER = "out_of_order"
    NAIVE_TIMESTAMP = "naive_timestamp"
    FUTURE = "future_timestamp"
    ABSURD = "absurd_value"
    SPIKE = "price_spike"
    UNCONFIRMED_JUMP = "unconfirmed_jump"


@dataclass(frozen=True, slots=True)
class BarRejection:
    """A refused bar and the reason, for the alert row and the log."""

    bar: Bar
    reason: RejectReason
    detail: str


# Splits as companies announce them, in new shares per old share (reverse splits below 1). A confirmed jump
# is read as a split only when its opening gap is one of these within `split_tolerance`: a denser set
# would turn most crashes into splits.
SPLIT_RATIOS: tuple[Fraction, ...] = tuple(
    sorted(
        {Fraction(n) for n in (2, 3, 4, 5, 6, 7, 8, 10, 15, 20, 25, 30, 40, 50, 100)}
        | {Fraction(1, n) for n in (2, 3, 4, 5, 6, 8, 10, 15, 20, 25, 30, 40, 50, 100)}
        | {Fraction(3, 2), Fraction(5, 2), Fraction(2, 3), Fraction(2, 5)}
    )
)


class BarGuardConfig(Section):
    """[guard]: what a plausible bar is.

    `range_tolerance`: how far open/close may lie outside [low, high] (vendor rounding), as a fraction of
    price. `max_price` and `max_volume`: beyond them a value is absurd. `jump_ratio`: a price above
    jump_ratio x or below 1/jump_ratio x the last accepted close is a jump to be confirmed by the next
    `confirm_bars` bars (0 turns it off); a symbol's first bar spanning more than jump_ratio squared is
    absurd.
    `split_tolerance`: how near (in log terms) a confirmed opening gap must be to a split ratio.
    `gap_alert_days`: a bar this long after its symbol's last one is told (0: never); it is still traded."""

    range_tolerance: Annotated[float, Field(ge=0, le=0.1)] = 1e-6
    max_price: Annotated[float, Field(gt=0)] = 1e12
    max_volume: Annotated[float, Field(gt=0)] = 1e18
    jump_ratio: Annotated[float, Field(ge=0, le=100)] = 1.3
    confirm_bars: Annotated[int, Field(ge=1, le=20)] = 1
    split_tolerance: Annotated[float, Field(ge=0, le=0.2)] = 0.03
    gap_alert_days: Annotated[float, Field(ge=0)] = 7.0

    @field_validator("jump_ratio")
    @classmethod
    def _ratio(cls, value: float) -> float:
        if 0 < value <= 1:
            raise ValueError("must be above 1 (a factor, like 1.3), or 0 to turn the jump check off")
        return value


@dataclass(frozen=True, slots=True)
class Jump:
    """A move beyond the band that the next bars confirmed: a split when `split` (new shares per old share)
    is set, else a real move."""

    symbol: str
    ts: datetime  # the first bar at the new level
    before: float  # the last accepted close before it
    after: float  # that bar's open
    split: Fraction | None


@dataclass(frozen=True, slots=True)
class Gap:
    """An accepted bar that came long after its symbol's previous one (a feed outage, a delisting, a
    file with years missing)."""

    bar: Bar
    previous: datetime  # the open time of the symbol's bar before it

    @property
    def length(self) -> timedelta:
        """From the previous bar's open to this one's."""
        return self.bar.ts - self.previous


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the guard made of one bar: the bars now accepted (in time order; the earlier ones were held
    until this bar confirmed them), those rejected, and the jump the accepted bars confirmed."""

    accepted: tuple[Bar, ...] = ()
    rejected: tuple[BarRejection, ...] = ()
    jump: Jump | None = None
    gaps: tuple[Gap, ...] = ()


class BarGuard:
    """Validates bars; remembers the last accepted time and close per symbol to refuse repeats, regressions
    and unconfirmed jumps."""

    def __init__(self, config: BarGuardConfig | None = None) -> None:
        self._config = config or BarGuardConfig()
        self._band = math.log(self._config.jump_ratio) if self._config.jump_ratio else None
        self._last_ts: dict[str, datetime] = {}
        self._close: dict[str, float] = {}
        self._held: dict[str, list[Bar]] = {}

    def seed(self, symbol: str, last_ts: datetime, close: float | None = None) -> None:
        """Start from a known last accepted bar (after a restart or a warm-up)."""
        self._last_ts[symbol] = utc(last_ts)
        if close is not None:
            self._close[symbol] = close

    def last_ts(self, symbol: str) -> datetime | None:
        """The open time of the last bar accepted for `symbol`."""
        return self._last_ts.get(symbol)

    def last_close(self, symbol: str) -> float | None:
        """The close of the last bar accepted for `symbol`."""
        return self._close.get(symbol)

    @staticmethod
    def from_the_future(bar: Bar, now: datetime) -> BarRejection | None:
        """A bar that opens more than one bar interval after `now` (the venue's clock, or the host's for a
        replay of stored bars): nobody can have closed it. Checked as a bar arrives, before it can move the
        market clock or become a symbol's last bar."""
        if bar.ts.tzinfo is None or bar.ts <= now + bar.timeframe:
            return None
        detail = f"bar at {bar.ts.isoformat()} opens after {(now + bar.timeframe).isoformat()}"
        return BarRejection(bar, RejectReason.FUTURE, detail)

    def check(self, bar: Bar) -> BarRejection | None:
        """None if the bar is good on its own and in order (and remembered), else the rejection; jumps are
        not judged (see `take`). A rejected bar changes no state."""
        rejection = self._validate(bar)
        if rejection is None:
            self._accept(bar)
        return rejection

    def take(self, bar: Bar) -> Verdict:
        """The next bar of the stream, judged whole: on its own, in order, and against the last accepted
        close. A held bar is in neither list until a later bar settles it."""
        rejection = self._validate(bar)
        if rejection is not None:
            return Verdict(rejected=(rejection,))
        held = self._held.pop(bar.symbol, None)
        if held is None:
            return self._judge(bar)
        if self._confirms(held[0], bar):
            held.append(bar)
            if len(held) <= self._config.confirm_bars:
                self._held[bar.symbol] = held
                return Verdict()
            return self._release(held, self._jump(held[0]))
        first = held[0]
        ref = self._close[bar.symbol]
        detail = (
            f"x{first.close / ref:.4g} jump from the last close {ref:g} that the next bar did not confirm"
        )
        unconfirmed = tuple(BarRejection(b, RejectReason.UNCONFIRMED_JUMP, detail) for b in held)
        verdict = self._judge(bar)
        return replace(verdict, rejected=unconfirmed + verdict.rejected)

    def _accept(self, bar: Bar) -> None:
        self._last_ts[bar.symbol] = bar.ts
        self._close[bar.symbol] = bar.close

    def _release(self, bars: list[Bar], jump: Jump | None = None) -> Verdict:
        """Accept these bars, in order, noting a long silence before any of them."""
        gaps = []
        limit = timedelta(days=self._config.gap_alert_days)
        for bar in bars:
            previous = self._last_ts.get(bar.symbol)
            if limit and previous is not None and bar.ts - previous > limit:
                gaps.append(Gap(bar, previous))
            self._accept(bar)
        return Verdict(accepted=tuple(bars), jump=jump, gaps=tuple(gaps))

    def _judge(self, bar: Bar) -> Verdict:
        """A bar in order, nothing held before it: accepted, rejected as a spike, or held."""
        ref = self._close.get(bar.symbol)
        if self._band is not None and ref is None and math.log(bar.high / bar.low) > 2 * self._band:
            # Nothing to compare with yet: a bar wider than the band both ways cannot be trusted.
            detail = f"high {bar.high:g} is x{bar.high / bar.low:.4g} the low {bar.low:g} in one bar"
            return Verdict(rejected=(BarRejection(bar, RejectReason.ABSURD, detail),))
        if self._band is None or ref is None:
            return self._release([bar])
        far = [(name, p) for name, p in _prices(bar) if abs(math.log(p / ref)) > self._band]
        if not far:
            return self._release([bar])
        if abs(math.log(bar.close / ref)) <= self._band:  # the level did not move: a spike
            name, price = far[0]
            detail = f"{name} {price:g} is x{price / ref:.4g} the last close {ref:g}, the close is not"
            return Verdict(rejected=(BarRejection(bar, RejectReason.SPIKE, detail),))
        self._held[bar.symbol] = [bar]
        return Verdict()

    def _confirms(self, first: Bar, bar: Bar) -> bool:
        """Does `bar` stay at the level `first` jumped to (every price in the band around it, the close
        nearer to it than to the old level)?"""
        assert self._band is not None
        level, ref = first.close, self._close[bar.symbol]
        if any(abs(math.log(p / level)) > self._band for _, p in _prices(bar)):
            return False
        return abs(math.log(bar.close / level)) < abs(math.log(bar.close / ref))

    def _jump(self, first: Bar) -> Jump:
        ref = self._close[first.symbol]
        gap = first.open / ref
        nearest = min(SPLIT_RATIOS, key=lambda r: abs(math.log(gap * float(r))))
        split = nearest if abs(math.log(gap * float(nearest))) <= self._config.split_tolerance else None
        return Jump(first.symbol, first.ts, ref, first.open, split)

    def _validate(self, bar: Bar) -> BarRejection | None:
        def reject(reason: RejectReason, detail: str) -> BarRejection:
            return BarRejection(bar, reason, detail)

        config = self._config
        if bar.ts.tzinfo is None:
            return reject(RejectReason.NAIVE_TIMESTAMP, "timestamp has no time zone")
        prices = (bar.open, bar.high, bar.low, bar.close)
        if not all(math.isfinite(x) for x in (*prices, bar.volume)):
            return reject(RejectReason.NOT_FINITE, f"NaN or infinite value in {(*prices, bar.volume)}")
        if min(prices) <= 0:
            return reject(RejectReason.NON_POSITIVE_PRICE, f"price <= 0 in {prices}")
        if bar.high < bar.low:
            return reject(RejectReason.HIGH_BELOW_LOW, f"high {bar.high} < low {bar.low}")
        slack = config.range_tolerance * bar.high
        for name, value in (("open", bar.open), ("close", bar.close)):
            if value > bar.high + slack or value < bar.low - slack:
                return reject(RejectReason.OUTSIDE_RANGE, f"{name} {value} outside [{bar.low}, {bar.high}]")
        if bar.volume < 0:
            return reject(RejectReason.NEGATIVE_VOLUME, f"volume {bar.volume} < 0")
        if bar.high > config.max_price:
            return reject(RejectReason.ABSURD, f"high {bar.high:g} above max_price {config.max_price:g}")
        if bar.volume > config.max_volume:
            detail = f"volume {bar.volume:g} above max_volume {config.max_volume:g}"
            return reject(RejectReason.ABSURD, detail)
        seen = [b.ts for b in self._held.get(bar.symbol, ())]
        if bar.symbol in self._last_ts:
            seen.append(self._last_ts[bar.symbol])
        last = max(seen, default=None)
        if last is not None and bar.ts == last:
            return reject(RejectReason.DUPLICATE, f"bar at {bar.ts.isoformat()} already seen")
        if last is not None and bar.ts < last:
            return reject(
                RejectReason.OUT_OF_ORDER, f"bar at {bar.ts.isoformat()} is before {last.isoformat()}"
            )
        return None


def _prices(bar: Bar) -> tuple[tuple[str, float], ...]:
    return (("open", bar.open), ("high", bar.high), ("low", bar.low), ("close", bar.close))
