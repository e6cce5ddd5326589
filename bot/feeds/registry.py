"""The feed registry: `[feed] kind` picks one member of this union (`replay` when left out). A new feed is
one module with its `*Config` (a `FeedSettings` whose `build()` makes the feed) plus one member here."""

from __future__ import annotations

from typing import Annotated

from pydantic import Tag

from bot.feeds.alpaca import AlpacaFeedConfig
from bot.feeds.replay import ReplayFeedConfig
from bot.settings import kind_of

DEFAULT_KIND = "replay"  # when the section leaves `kind` out

FeedConfig = Annotated[
    Annotated[ReplayFeedConfig, Tag("replay")] | Annotated[AlpacaFeedConfig, Tag("alpaca")],
    kind_of(DEFAULT_KIND),
]
