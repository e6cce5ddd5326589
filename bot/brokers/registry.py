"""The broker registry: `[broker] kind` picks one member of this union (`sim` when left out). A new broker
is one module with its `*Config` (a `BrokerSettings` whose `build()` makes the broker) plus one member
here."""

from __future__ import annotations

from typing import Annotated

from pydantic import Tag

from bot.brokers.alpaca import AlpacaBrokerConfig
from bot.brokers.sim import SimBrokerConfig
from bot.settings import kind_of

DEFAULT_KIND = "sim"  # when the section leaves `kind` out

BrokerConfig = Annotated[
    Annotated[SimBrokerConfig, Tag("sim")] | Annotated[AlpacaBrokerConfig, Tag("alpaca")],
    kind_of(DEFAULT_KIND),
]
