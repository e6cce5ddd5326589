"""The feed registry: `[feed] kind` picks one member of this union. A new feed is one module with its
`*Config` (a `FeedSettings` whose `build()` makes the feed) plus one member here."""

from __future__ import annotations

from bot.feeds.replay import ReplayFeedConfig

FeedConfig = ReplayFeedConfig  # the union of one: the live feeds come next
