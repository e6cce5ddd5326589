"""The feed contract every source of bars keeps."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from bot.bars import Bar


@dataclass(frozen=True, slots=True)
class FeedProblem:
    """Something the feed could not turn into a bar (an unreadable row, a gap it could not fill)."""

    symbol: str
    message: str


class Feed(Protocol):
    """A source of closed bars.

    `stream()` yields bars in close-time order and, for a finite source, ends when the data is exhausted.
    `resume_from()` is called before `stream()` with the last bar already handled per symbol, so a restart
    neither repeats nor skips a bar.
    """

    def resume_from(self, last_seen: Mapping[str, datetime]) -> None:
        """Skip bars at or before these per-symbol open times."""
        ...

    def stream(self) -> AsyncIterator[Bar]:
        """Closed bars as they become available."""
        ...

    async def history(self, symbol: str, start: datetime, end: datetime) -> list[Bar]:
        """Bars of `symbol` with start <= ts < end, oldest first (warm-up and gap backfill)."""
        ...

    def drain_problems(self) -> list[FeedProblem]:
        """Problems seen since the last call, for the alert journal."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
