"""The exception hierarchy, shaped by what the loop does about each kind of failure.

- `TemporaryError`: the world may be fine in a moment (timeout, 5xx, dropped socket): retry with backoff.
- `OperationalError`: the daemon cannot go on as configured (bad config, missing model, live endpoint):
  stop cleanly with the message.
- `SymbolError`: one symbol is broken (bad bar, no price): skip that symbol, alert, keep trading the others.
"""

from __future__ import annotations


class PaperbotError(Exception):
    """Base of every error paperbot raises on purpose."""


class TemporaryError(PaperbotError):
    """A failure worth retrying with backoff."""


class OperationalError(PaperbotError):
    """A failure that stops the daemon cleanly with a message for the operator."""


class ConfigError(OperationalError):
    """config.toml is invalid: names the key and the reason."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"config error at {key}: {reason}")
        self.key = key
        self.reason = reason


class ModelError(OperationalError):
    """No usable model: missing files, or a card that does not match the running config."""


class SymbolError(PaperbotError):
    """A problem confined to one symbol: skip it, alert, continue with the others."""

    def __init__(self, symbol: str, message: str) -> None:
        super().__init__(f"{symbol}: {message}")
        self.symbol = symbol


class BrokerError(TemporaryError):
    """The broker did not answer in a usable way; the order state is unknown until reconciled."""


class BrokerUnavailableError(TemporaryError):
    """The broker cannot take orders now (its order-update stream is down): nothing was sent, so the order
    is sent once the broker is back, while its bar is still fresh."""
