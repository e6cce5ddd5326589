"""Feeds: where bars come from. `[feed] kind` picks one through `bot.feeds.registry`."""

from bot.feeds.base import BarRevision, Feed, FeedContext, FeedItem, FeedProblem, FeedSettings
from bot.feeds.registry import FeedConfig
from bot.feeds.replay import load_csv

__all__ = [
    "BarRevision",
    "Feed",
    "FeedConfig",
    "FeedContext",
    "FeedItem",
    "FeedProblem",
    "FeedSettings",
    "load_csv",
]
