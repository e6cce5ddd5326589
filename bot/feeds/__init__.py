"""Feeds: where bars come from (replay now; alpaca and ccxt adapters later)."""

from bot.feeds.base import Feed, FeedProblem
from bot.feeds.replay import ReplayFeed, load_csv

__all__ = ["Feed", "FeedProblem", "ReplayFeed", "load_csv"]
