"""Where a bar of a timeframe begins and ends, built from minute bars.

Crypto trades around the clock: periods are aligned to UTC. US stocks trade in regular sessions (from the
venue's calendar, early closes included): only a session's minutes count, an intraday period is aligned
to the clock and cut at the close (so 1h bars are 9:00 (from 9:30), 10:00, ... 15:00 New York, as in the
bundled data), and a 1d bar is the session, labelled at midnight New York."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from bot.bars import Bar

NEW_YORK = ZoneInfo("America/New_York")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True, order=True)
class Period:
    """One bar's span: it is labelled `start` and complete at `end`."""

    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class Session:
    """One trading day's regular session, in UTC."""

    day: date
    open: datetime
    close: datetime


def supported(timeframe: timedelta) -> bool:
    """Timeframes that tile an hour or a day: 1-60 minutes dividing an hour, hours dividing a day, 1d."""
    minutes = timeframe.total_seconds() / 60
    if minutes <= 60:
        return minutes >= 1 and minutes == int(minutes) and 60 % int(minutes) == 0
    return timeframe <= DAY and (DAY.total_seconds() / timeframe.total_seconds()).is_integer()


def _floor(ts: datetime, step: timedelta) -> datetime:
    return ts - (ts - _EPOCH) % step


class Calendar:
    """A venue's regular sessions, learnt from its calendar as they are needed."""

    def __init__(self) -> None:
        self._sessions: list[Session] = []
        self._closes: list[datetime] = []

    def add(self, sessions: Iterable[Session]) -> None:
        """Learn sessions; repeats are ignored."""
        known = {s.day for s in self._sessions}
        fresh = [s for s in sessions if s.day not in known]
        self._sessions = sorted([*self._sessions, *fresh], key=lambda s: s.open)
        self._closes = [s.close for s in self._sessions]

    def session_at(self, ts: datetime) -> Session | None:
        """The session trading at `ts`, if any."""
        session = self.next_close(ts)
        return session if session is not None and session.open <= ts else None

    def next_close(self, ts: datetime) -> Session | None:
        """The first session that closes after `ts`, if one is known."""
        i = bisect.bisect_right(self._closes, ts)
        return self._sessions[i] if i < len(self._sessions) else None

    def covers(self, start: datetime, end: datetime) -> bool:
        """Whether the sessions known span [start, end]."""
        return bool(self._sessions) and self._sessions[0].open <= start and self._sessions[-1].close >= end


class Periods:
    """The periods of one timeframe: around the clock, or within a calendar's sessions."""

    def __init__(self, timeframe: timedelta, calendar: Calendar | None) -> None:
        self.timeframe = timeframe
        self._calendar = calendar

    def of(self, minute: datetime) -> Period | None:
        """The period a minute starting at `minute` belongs to; None outside every session."""
        if self._calendar is None:
            start = _floor(minute, self.timeframe)
            return Period(start, start + self.timeframe)
        session = self._calendar.session_at(minute)
        if session is None:
            return None
        if self.timeframe >= DAY:
            label = datetime.combine(session.day, datetime.min.time(), NEW_YORK).astimezone(UTC)
            return Period(label, session.close)
        start = _floor(minute, self.timeframe)
        return Period(start, min(start + self.timeframe, session.close))

    def after(self, instant: datetime) -> Period | None:
        """The first period that ends after `instant`; None past the sessions known."""
        if self._calendar is None:
            return self.of(instant)
        session = self._calendar.next_close(instant)
        return None if session is None else self.of(max(instant, session.open))


def aggregate(symbol: str, period: Period, minutes: Sequence[Bar], timeframe: timedelta) -> Bar | None:
    """The bar of `period` from its minute bars (oldest first); None when nothing traded in it."""
    if not minutes:
        return None
    return Bar(
        symbol,
        period.start,
        minutes[0].open,
        max(m.high for m in minutes),
        min(m.low for m in minutes),
        minutes[-1].close,
        sum(m.volume for m in minutes),
        timeframe,
    )
