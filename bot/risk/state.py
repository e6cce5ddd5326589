"""Trading state (ACTIVE, REDUCING, HALTED) and what moves it: drawdown from the marked-to-market equity
peak, the loss since the last daily reset, and the operator."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from zoneinfo import ZoneInfo

from bot.config import RiskSettings


class TradingState(StrEnum):
    """ACTIVE trades freely; REDUCING only shrinks positions; HALTED sends nothing."""

    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"

    @property
    def severity(self) -> int:
        """Order of restriction: a breach only ever moves to a more restrictive state."""
        return _SEVERITY[self]


_SEVERITY = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}


class StateSource(StrEnum):
    """Who moved the state: a limit breach, the operator, the daily reset lifting a daily-loss halt, or
    reconciliation with the broker (a mismatch halts, its resolution lifts that halt)."""

    BREACH = "breach"
    OPERATOR = "operator"
    DAILY_RESET = "daily_reset"
    RECONCILIATION = "reconciliation"


class StateCause(StrEnum):
    """Why the state is what it is (kept with the state, so the daily reset knows what it may lift)."""

    MAX_DRAWDOWN = "max_drawdown"
    DAILY_LOSS = "daily_loss"
    OPERATOR = "operator"
    RECONCILIATION = "reconciliation"


@dataclass(frozen=True, slots=True)
class TradingStateChange:
    """A transition, to be journaled as a trading_state_events row and alerted."""

    scope: str
    previous: TradingState
    state: TradingState
    reason: str
    ts: datetime
    source: StateSource = StateSource.BREACH
    equity: Decimal | None = None


def day_start(ts: datetime, zone: str, reset: str) -> datetime:
    """The UTC instant of the last daily reset at or before `ts`: midnight, or a session-open time HH:MM,
    in the IANA zone `zone` (so the reset follows that zone's daylight saving)."""
    tz = ZoneInfo(zone)
    local = ts.astimezone(tz)
    at = time(0) if reset == "midnight" else time.fromisoformat(reset)
    start = datetime.combine(local.date(), at, tzinfo=tz)
    if start > local:
        start = datetime.combine(local.date() - timedelta(days=1), at, tzinfo=tz)
    return start.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class SavedState:
    """A tracker as the trading_states row keeps it."""

    state: TradingState
    reason: str | None
    peak: Decimal | None
    cause: str | None = None
    day_start: datetime | None = None
    day_equity: Decimal | None = None
    event_id: int = 0


class TradingStateTracker:
    """Tracks the equity peak and the day's starting equity, and moves the state on a breach.

    Recovery of equity never resumes trading. A drawdown breach is lifted only by the operator; a
    daily-loss breach is lifted by the next daily reset too (the limit is per day). A resume re-bases the
    peak and the day's start at the current equity, so it does not re-halt at once on the same loss."""

    def __init__(
        self,
        scope: str,
        risk: RiskSettings,
        state: TradingState = TradingState.ACTIVE,
        peak: Decimal | None = None,
        reason: str | None = None,
    ) -> None:
        self.scope = scope
        self.state = state
        self.peak = peak
        self.reason = reason
        self.cause: str | None = None
        self.day_start: datetime | None = None
        self.day_equity: Decimal | None = None
        self.last_equity: Decimal | None = None
        self.event_id = 0  # the last trading_state_events row applied (see Engine.sync_operator)
        self._risk = risk

    def restore(self, saved: SavedState) -> None:
        """Continue from the persisted row."""
        self.state, self.reason, self.peak, self.cause = saved.state, saved.reason, saved.peak, saved.cause
        self.day_start, self.day_equity, self.event_id = saved.day_start, saved.day_equity, saved.event_id

    def drawdown(self, equity: Decimal) -> float:
        """Fraction below the peak (0 at or above it)."""
        if not self.peak or self.peak <= 0:
            return 0.0
        return max(0.0, float((self.peak - equity) / self.peak))

    def daily_loss(self, equity: Decimal) -> float:
        """Fraction below the equity at the last daily reset (0 at or above it)."""
        if not self.day_equity or self.day_equity <= 0:
            return 0.0
        return max(0.0, float((self.day_equity - equity) / self.day_equity))

    def update(self, equity: Decimal, ts: datetime) -> list[TradingStateChange]:
        """Roll the trading day, raise the peak, then check the drawdown and daily-loss limits."""
        risk = self._risk
        changes: list[TradingStateChange] = []
        start = day_start(ts, risk.daily_reset_timezone, risk.daily_reset_time)
        if self.day_start is None or start > self.day_start:
            # The day starts at the equity as it stood at the reset: the last one seen before it.
            self.day_start, self.day_equity = start, self.last_equity or equity
            if self.cause == StateCause.DAILY_LOSS and self.state is not TradingState.ACTIVE:
                lift = self._move(TradingState.ACTIVE, "daily reset", ts, StateSource.DAILY_RESET, None)
                changes.append(lift)
        self.last_equity = equity
        if self.peak is None or equity > self.peak:
            self.peak = equity
        target = TradingState.HALTED if risk.on_breach == "halt" else TradingState.REDUCING
        if target.severity <= self.state.severity:
            return changes
        dd = self.drawdown(equity)
        loss = self.daily_loss(equity)
        if dd >= risk.max_drawdown:
            reason = f"max_drawdown: {dd:.2%} from peak {self.peak} >= limit {risk.max_drawdown:.2%}"
            changes.append(
                self._move(target, reason, ts, StateSource.BREACH, StateCause.MAX_DRAWDOWN, equity=equity)
            )
        elif risk.daily_loss_limit is not None and loss >= risk.daily_loss_limit:
            reason = (
                f"daily_loss: {loss:.2%} below the day's start {self.day_equity} >= limit"
                f" {risk.daily_loss_limit:.2%}"
            )
            changes.append(
                self._move(target, reason, ts, StateSource.BREACH, StateCause.DAILY_LOSS, equity=equity)
            )
        return changes

    def operator(
        self, state: TradingState, reason: str, ts: datetime, equity: Decimal | None
    ) -> TradingStateChange | None:
        """`paperbot halt` or `paperbot resume`; a resume re-bases the peak and the day at `equity`."""
        if state is TradingState.ACTIVE and equity is not None:
            self.peak = self.day_equity = equity
        if state is self.state:
            self.reason = reason
            return None
        cause = None if state is TradingState.ACTIVE else StateCause.OPERATOR
        return self._move(state, reason, ts, StateSource.OPERATOR, cause, equity=equity)

    def reconciled(self, problem: str | None, ts: datetime) -> TradingStateChange | None:
        """A reconciliation's verdict: a `problem` halts (unless already halted for another cause, which
        then stands); none lifts a halt that reconciliation itself caused."""
        if problem is not None:
            if self.state is TradingState.HALTED:
                return None
            reason = f"reconciliation: {problem}"
            return self._move(
                TradingState.HALTED, reason, ts, StateSource.RECONCILIATION, StateCause.RECONCILIATION
            )
        if self.cause == StateCause.RECONCILIATION and self.state is not TradingState.ACTIVE:
            return self._move(TradingState.ACTIVE, "reconciled", ts, StateSource.RECONCILIATION, None)
        return None

    def _move(
        self,
        state: TradingState,
        reason: str,
        ts: datetime,
        source: StateSource,
        cause: StateCause | None,
        *,
        equity: Decimal | None = None,
    ) -> TradingStateChange:
        change = TradingStateChange(self.scope, self.state, state, reason, ts, source, equity)
        self.state, self.reason, self.cause = state, reason, None if cause is None else cause.value
        return change


class OrderCounter:
    """Decision times of the orders a strategy sent, for the order-rate check: per second and per day."""

    def __init__(self) -> None:
        self._times: list[datetime] = []
        self._seconds: Counter[datetime] = Counter()  # orders by whole second of their time
        self._since: datetime | None = None  # the day start the times were last cut at

    def add(self, ts: datetime) -> None:
        """One order sent at `ts`."""
        if self._since is not None and ts < self._since:
            return  # before the current day: no count reads it again
        self._times.append(ts)
        self._seconds[ts.replace(microsecond=0)] += 1

    def counts(self, now: datetime, since: datetime | None) -> tuple[int, int]:
        """(orders since `since`, the day's start; orders in the same second as `now`)."""
        if since is not None and since != self._since:  # a new day: older days are done with
            self._times = [t for t in self._times if t >= since]
            self._seconds = Counter(t.replace(microsecond=0) for t in self._times)
            self._since = since
        return len(self._times), self._seconds[now.replace(microsecond=0)]
