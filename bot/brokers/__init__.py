"""Brokers: where orders go. `[broker] kind` picks one through `bot.brokers.registry`."""

from bot.brokers.base import (
    Account,
    Broker,
    BrokerContext,
    BrokerEvent,
    BrokerEvents,
    BrokerSettings,
    BrokerStatus,
)
from bot.brokers.registry import BrokerConfig

__all__ = [
    "Account",
    "Broker",
    "BrokerConfig",
    "BrokerContext",
    "BrokerEvent",
    "BrokerEvents",
    "BrokerSettings",
    "BrokerStatus",
]
