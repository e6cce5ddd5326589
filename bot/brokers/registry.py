"""The broker registry: `[broker] kind` picks one member of this union. A new broker is one module with
its `*Config` (a `BrokerSettings` whose `build()` makes the broker) plus one member here."""

from __future__ import annotations

from bot.brokers.sim import SimBrokerConfig

BrokerConfig = SimBrokerConfig  # the union of one: the venues' brokers come next
