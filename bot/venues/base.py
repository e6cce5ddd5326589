"""What every venue's wire reports when a call does not succeed."""

from __future__ import annotations

from bot.errors import PaperbotError


class VenueError(PaperbotError):
    """A venue's answer that is not a success, or no answer at all (status None)."""

    def __init__(self, venue: str, status: int | None, message: str) -> None:
        super().__init__(f"{venue}: {status or 'no answer'}: {message}")
        self.status = status
        self.message = message

    @property
    def temporary(self) -> bool:
        """Worth retrying later: no answer, rate limited, or the server's fault."""
        return self.status is None or self.status == 429 or self.status >= 500
