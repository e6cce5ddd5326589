"""Alerts: things an operator should see, each journaled as a row and logged."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Severity(StrEnum):
    """How urgent."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class AlertKind(StrEnum):
    """What happened. Stable codes: scripts filter on them."""

    BAR_REJECTED = "bar_rejected"
    LATE_BAR = "late_bar"
    BAR_REVISED = "bar_revised"
    FEED_PROBLEM = "feed_problem"
    CLOCK_SKEW = "clock_skew"
    OUTLIER_BAR = "outlier_bar"
    PRICE_JUMP = "price_jump"
    DATA_GAP = "data_gap"
    SPLIT = "split"
    DRIFT = "drift"
    TRADING_STATE = "trading_state"
    BROKER_ERROR = "broker_error"
    ORDER_REJECTED = "order_rejected"
    RECONCILIATION = "reconciliation"


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert, with the market time it refers to."""

    ts: datetime
    severity: Severity
    kind: AlertKind
    message: str
    strategy: str | None = None
    symbol: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
