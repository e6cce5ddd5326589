"""The Bar value and the BarGuard, the first stage of the bar path: nothing malformed gets past it."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

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


@dataclass(frozen=True, slots=True)
class BarRejection:
    """A refused bar and the reason, for the alert row and the log."""

    bar: Bar
    reason: RejectReason
    detail: str


@dataclass(frozen=True, slots=True)
class BarGuardConfig:
    """Tolerance for open/close lying a hair outside [low, high] (vendor rounding), as a fraction of price."""

    range_tolerance: float = 1e-6


class BarGuard:
    """Validates bars; remembers the last accepted time per symbol to refuse repeats and regressions."""

    def __init__(self, config: BarGuardConfig | None = None) -> None:
        self._config = config or BarGuardConfig()
        self._last_ts: dict[str, datetime] = {}

    def seed(self, symbol: str, last_ts: datetime) -> None:
        """Start from a known last accepted bar (after a restart or a warm-up)."""
        self._last_ts[symbol] = utc(last_ts)

    def last_ts(self, symbol: str) -> datetime | None:
        """The open time of the last bar accepted for `symbol`."""
        return self._last_ts.get(symbol)

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
        """None if the bar is good (and remembered), else the rejection. A rejected bar changes no state."""
        rejection = self._validate(bar)
        if rejection is None:
            self._last_ts[bar.symbol] = bar.ts
        return rejection

    def _validate(self, bar: Bar) -> BarRejection | None:
        def reject(reason: RejectReason, detail: str) -> BarRejection:
            return BarRejection(bar, reason, detail)

        if bar.ts.tzinfo is None:
            return reject(RejectReason.NAIVE_TIMESTAMP, "timestamp has no time zone")
        prices = (bar.open, bar.high, bar.low, bar.close)
        if not all(math.isfinite(x) for x in (*prices, bar.volume)):
            return reject(RejectReason.NOT_FINITE, f"NaN or infinite value in {(*prices, bar.volume)}")
        if min(prices) <= 0:
            return reject(RejectReason.NON_POSITIVE_PRICE, f"price <= 0 in {prices}")
        if bar.high < bar.low:
            return reject(RejectReason.HIGH_BELOW_LOW, f"high {bar.high} < low {bar.low}")
        slack = self._config.range_tolerance * bar.high
        for name, value in (("open", bar.open), ("close", bar.close)):
            if value > bar.high + slack or value < bar.low - slack:
                return reject(RejectReason.OUTSIDE_RANGE, f"{name} {value} outside [{bar.low}, {bar.high}]")
        if bar.volume < 0:
            return reject(RejectReason.NEGATIVE_VOLUME, f"volume {bar.volume} < 0")
        last = self._last_ts.get(bar.symbol)
        if last is not None and bar.ts == last:
            return reject(RejectReason.DUPLICATE, f"bar at {bar.ts.isoformat()} already seen")
        if last is not None and bar.ts < last:
            return reject(
                RejectReason.OUT_OF_ORDER, f"bar at {bar.ts.isoformat()} is before {last.isoformat()}"
            )
        return None
