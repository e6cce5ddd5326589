"""Brokers: where orders go (the simulated broker now; alpaca and ccxt adapters later)."""

from bot.brokers.base import Account, Broker
from bot.brokers.sim import SimBroker

__all__ = ["Account", "Broker", "SimBroker"]
