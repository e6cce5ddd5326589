"""The book's exposure totals, kept up to date order by order while a batch decides.

Within a batch's decisions positions and marks stand still (fills and prices came in before); only the
orders the batch sends move the exposure. So the totals are summed once per batch, O(positions), and
each order then moves them in O(1), where summing them for every decision cost O(positions) each.
Decimal sums of quantities times marks are exact here, so the totals equal a fresh sum bit for bit."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

_ZERO = Decimal(0)


@dataclass(slots=True)
class ExposureTotals:
    """Gross and net exposure (open orders included) and the cash promised to open buys, at `marks`.

    `positions` and `marks` are read, never written: the ledger's and the engine's own mappings.
    `pending` (each symbol's unfilled open-order quantity, signed) is this batch's copy, moved by
    `add_order`."""

    positions: Mapping[str, Decimal]
    pending: dict[str, Decimal]
    marks: Mapping[str, Decimal]
    gross: Decimal = _ZERO
    net: Decimal = _ZERO
    pending_buy: Decimal = _ZERO

    @classmethod
    def of(
        cls, positions: Mapping[str, Decimal], pending: dict[str, Decimal], marks: Mapping[str, Decimal]
    ) -> ExposureTotals:
        """The totals summed afresh."""
        totals = cls(positions, pending, marks)
        for symbol in {*positions, *pending}:
            exposure = totals.exposure(symbol)
            if exposure:
                totals.gross += abs(exposure) * marks[symbol]
                totals.net += exposure * marks[symbol]
        totals.pending_buy = sum((q * marks[s] for s, q in pending.items() if q > 0), _ZERO)
        return totals

    def exposure(self, symbol: str) -> Decimal:
        """Signed quantity once every open order has filled."""
        return self.positions.get(symbol, _ZERO) + self.pending.get(symbol, _ZERO)

    def add_order(self, symbol: str, signed_qty: Decimal) -> None:
        """A new open order of `signed_qty` (buys positive) in `symbol`."""
        mark = self.marks[symbol]
        before = self.exposure(symbol)
        waiting = self.pending.get(symbol, _ZERO)
        self.pending[symbol] = waiting + signed_qty
        self.gross += (abs(before + signed_qty) - abs(before)) * mark
        self.net += signed_qty * mark
        self.pending_buy += (max(waiting + signed_qty, _ZERO) - max(waiting, _ZERO)) * mark
