"""Live batching: bars grouped by the instant they close at, each instant decided once and in order.

An instant is due when every symbol of each strategy that has a bar in it has its bar, or when the linger
has passed, on the market clock, since its first bar arrived. A bar for an instant at or before the last
decided one is late: the engine records and alerts it, and never trades on it. So a bar that arrives late
can neither split an instant nor move time backwards."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from bot.bars import Bar


@dataclass
class Instant:
    """The bars closing at one instant, and the market time its first bar arrived at."""

    close: datetime
    arrived: datetime
    bars: list[Bar] = field(default_factory=list)


class Batcher:
    """Collects bars into instants and says which are due."""

    def __init__(self, groups: Iterable[Iterable[str]], linger: timedelta) -> None:
        self._group = {s: frozenset(g) for g in map(frozenset, groups) for s in g}
        self._linger = linger
        self._pending: dict[datetime, Instant] = {}
        self.decided: datetime | None = None

    def add(self, bar: Bar, now: datetime) -> bool:
        """Take a bar that arrived at market time `now`; False when its instant was already decided."""
        close = bar.close_time
        if self.decided is not None and close <= self.decided:
            return False
        instant = self._pending.get(close)
        if instant is None:
            instant = self._pending[close] = Instant(close, now)
        instant.bars.append(bar)
        return True

    def revise(self, bar: Bar) -> bool:
        """Replace a bar of an undecided instant by its revision; False when there is none to replace."""
        instant = self._pending.get(bar.close_time)
        if instant is None:
            return False
        for i, old in enumerate(instant.bars):
            if old.symbol == bar.symbol and old.ts == bar.ts:
                instant.bars[i] = bar
                return True
        return False

    def deadline(self) -> datetime | None:
        """When the oldest undecided instant is due at the latest (later ones wait for it)."""
        if not self._pending:
            return None
        return self._pending[min(self._pending)].arrived + self._linger

    def due(self, now: datetime, *, flush: bool = False) -> list[Instant]:
        """The instants to decide now, oldest first; `flush` takes every one (the feed has ended)."""
        due: list[Instant] = []
        for close in sorted(self._pending):
            instant = self._pending[close]
            if not (flush or self._complete(instant) or now >= instant.arrived + self._linger):
                break
            due.append(self._pending.pop(close))
            self.decided = close
        return due

    def _complete(self, instant: Instant) -> bool:
        present = {b.symbol for b in instant.bars}
        return all(self._group.get(s, frozenset((s,))) <= present for s in present)
