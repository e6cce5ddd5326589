"""The exception hierarchy, shaped by what the loop does about each kind of failure, and the exit codes
the CLI maps them to.

- `TemporaryError`: the world may be fine in a moment (timeout, 5xx, dropped socket): retry with backoff;
  one that outlives its retries ends the process with exit code 3, which systemd restarts.
- `OperationalError`: the daemon cannot go on as configured (bad config, a bad input file, a missing model,
  a live endpoint): stop cleanly with one line naming the key, file or value; exit code 2, never restarted.
- `SymbolError`: one symbol is broken (bad bar, no price): skip that symbol, alert, keep trading the others.
Anything else is a bug: a traceback and exit code 1.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What the process says when it ends (the systemd unit restarts 1 and 3, never 2)."""

    DONE = 0
    BUG = 1
    USER = 2  # configuration or input error: fix it, then start again
    TEMPORARY = 3  # a temporary fault (the database, a venue) that outlived its retries
    INTERRUPTED = 130  # Ctrl-C before the daemon could install its handlers


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


class InputError(OperationalError):
    """An input file or value that cannot be used: the message names it and says why, in one line."""


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


class DatabaseFaultError(TemporaryError):
    """The database failed past retrying: a temporary fault that outlived `[daemon] database_retry_seconds`
    (or was still there when a stop came), or a full disk. The batch in hand was not recorded; the next
    start replays it."""
