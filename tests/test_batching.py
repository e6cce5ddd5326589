"""Live batching: instants decided once, in order, when complete or when their linger has passed on the
market clock; a bar for a decided instant is late."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.bars import Bar
from bot.batching import Batcher

T0 = datetime(2024, 1, 2, 15, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
LINGER = timedelta(seconds=2)


def bar(symbol: str, ts: datetime, close: float = 100.0) -> Bar:
    return Bar(symbol, ts, close, close, close, close, 1.0, HOUR)


def closes(instants: list[object]) -> list[datetime]:
    return [i.close for i in instants]  # type: ignore[attr-defined]


def test_an_instant_is_due_once_every_symbol_of_its_strategy_is_in() -> None:
    batcher = Batcher([["SPY", "AAPL"], ["BTC"]], LINGER)
    arrived = T0 + HOUR
    assert batcher.add(bar("SPY", T0), arrived)
    assert batcher.due(arrived) == []  # AAPL is still to come
    assert batcher.deadline() == arrived + LINGER
    assert batcher.add(bar("AAPL", T0), arrived)
    (instant,) = batcher.due(arrived)
    assert [b.symbol for b in instant.bars] == ["SPY", "AAPL"]
    assert (instant.close, instant.arrived) == (T0 + HOUR, arrived)
    assert batcher.decided == T0 + HOUR
    # A strategy without a bar at this instant is not waited for (BTC trades another timeframe).
    assert batcher.deadline() is None


def test_the_linger_decides_an_incomplete_instant_and_a_later_bar_for_it_is_late() -> None:
    batcher = Batcher([["SPY", "AAPL"]], LINGER)
    arrived = T0 + HOUR + timedelta(milliseconds=50)
    batcher.add(bar("SPY", T0), arrived)
    assert batcher.due(arrived + LINGER - timedelta(microseconds=1)) == []
    (instant,) = batcher.due(arrived + LINGER)
    assert [b.symbol for b in instant.bars] == ["SPY"]
    assert not batcher.add(bar("AAPL", T0), arrived + 3 * LINGER)  # late: never traded
    assert not batcher.add(bar("SPY", T0 - HOUR), arrived + 3 * LINGER)  # older still: late too
    assert batcher.due(arrived + 10 * LINGER) == []


def test_instants_are_decided_in_order_and_time_never_goes_backwards() -> None:
    batcher = Batcher([["SPY", "AAPL"]], LINGER)
    t1 = T0 + HOUR
    batcher.add(bar("SPY", T0), t1)
    batcher.add(bar("SPY", T0 + HOUR), t1 + timedelta(seconds=1))
    batcher.add(bar("AAPL", T0 + HOUR), t1 + timedelta(seconds=1))
    # The later instant is complete, but the earlier one is still lingering: nothing is decided yet.
    assert batcher.due(t1 + timedelta(seconds=1)) == []
    assert closes(batcher.due(t1 + LINGER)) == [T0 + HOUR, T0 + 2 * HOUR]  # type: ignore[arg-type]
    assert batcher.decided == T0 + 2 * HOUR


def test_a_replay_decides_an_incomplete_instant_when_the_next_instant_arrives() -> None:
    """A replay has no clock of its own: market time is its latest bar, so the next instant's bar is what
    ends the linger of an instant with a symbol missing, exactly where the old batching closed it."""
    batcher = Batcher([["SPY", "AAPL"]], timedelta(seconds=0.25))
    batcher.add(bar("SPY", T0), T0 + HOUR)
    assert batcher.due(T0 + HOUR) == []
    batcher.add(bar("SPY", T0 + HOUR), T0 + 2 * HOUR)
    assert closes(batcher.due(T0 + 2 * HOUR)) == [T0 + HOUR]  # type: ignore[arg-type]
    assert closes(batcher.due(T0 + 2 * HOUR, flush=True)) == [T0 + 2 * HOUR]  # type: ignore[arg-type]


def test_a_revision_replaces_its_bar_only_while_the_instant_is_undecided() -> None:
    batcher = Batcher([["SPY", "AAPL"]], LINGER)
    batcher.add(bar("SPY", T0, 100.0), T0 + HOUR)
    assert batcher.revise(bar("SPY", T0, 101.0))
    assert not batcher.revise(bar("AAPL", T0, 50.0))  # nothing of AAPL's to replace
    batcher.add(bar("AAPL", T0), T0 + HOUR)
    (instant,) = batcher.due(T0 + HOUR)
    assert [b.close for b in instant.bars] == [101.0, 100.0]
    assert not batcher.revise(bar("SPY", T0, 102.0))  # decided: the engine records it instead
