"""Market time: the venue's clock, never the host's wall clock.

A live venue's time is the latest time it sent (a bar's end, an event's timestamp, a reading of its server
clock), carried forward between messages by the host's monotonic clock, which no NTP step or operator can
move. So a skewed host clock never closes a bar early or late; the skew is measured and reported instead."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol


class MarketClock(Protocol):
    """What the engine asks of a feed's clock."""

    def now(self) -> datetime:
        """The venue's time now."""
        ...

    def seconds_until(self, ts: datetime) -> float:
        """Host seconds until the venue's clock reaches `ts` (0 when it has)."""
        ...


class VenueClock:
    """The latest venue time seen, advanced by the host's monotonic clock between observations."""

    def __init__(
        self,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._monotonic = monotonic
        self._wall = wall
        self._anchor: datetime | None = None
        self._anchor_mono = 0.0

    @property
    def synced(self) -> bool:
        """Whether the venue has told us its time at least once."""
        return self._anchor is not None

    def observe(self, venue_ts: datetime) -> None:
        """A time the venue sent (an event time, a bar's end). The clock never moves backwards."""
        if self._anchor is None or venue_ts > self.now():
            self._anchor, self._anchor_mono = venue_ts, self._monotonic()

    def sync(self, server_ts: datetime) -> float:
        """A reading of the venue's server clock; returns its skew from the host's wall clock in seconds
        (positive: the host is behind)."""
        self.observe(server_ts)
        return (server_ts - self._wall()).total_seconds()

    def now(self) -> datetime:
        """The venue's time now; the host's wall clock only until the venue has said anything."""
        if self._anchor is None:
            return self._wall()
        return self._anchor + timedelta(seconds=self._monotonic() - self._anchor_mono)

    def seconds_until(self, ts: datetime) -> float:
        """Host seconds until the venue's clock reaches `ts`."""
        return max(0.0, (ts - self.now()).total_seconds())
