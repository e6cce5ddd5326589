"""Cash and positions from fills; equity from marks. One implementation, used by the engine and the
simulated broker alike, so the books can always be recomputed from the fills table."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from types import MappingProxyType

from bot.orders import Fill, money, split_qty


@dataclass(frozen=True, slots=True)
class Split:
    """A stock split seen in the prices: from `ts` (the first bar at the new level) each old share is `ratio`
    new ones (4 for a 4:1 split, 1/10 for a 1:10 reverse split)."""

    symbol: str
    ts: datetime
    ratio: Fraction


@dataclass(frozen=True, slots=True)
class Position:
    """Signed quantity and average entry price of one symbol."""

    symbol: str
    qty: Decimal
    avg_price: Decimal


@dataclass
class Ledger:
    """Mutable books: starting cash plus the effect of every fill applied, in order."""

    starting_cash: Decimal
    cash: Decimal = field(init=False)
    _qty: dict[str, Decimal] = field(default_factory=dict, init=False)
    _avg: dict[str, Decimal] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.cash = self.starting_cash

    @classmethod
    def from_fills(
        cls, starting_cash: Decimal, fills: Iterable[Fill], splits: Sequence[Split] = ()
    ) -> Ledger:
        """Rebuild the books from the fill history and the splits (a restart, or a report). A split comes
        before every fill at or after its bar: those fills are already at the new scale."""
        ledger = cls(starting_cash)
        waiting = sorted(splits, key=lambda s: s.ts)
        for fill in fills:
            while waiting and waiting[0].ts <= fill.ts:
                ledger.split(waiting.pop(0))
            ledger.apply(fill)
        for split in waiting:
            ledger.split(split)
        return ledger

    def apply(self, fill: Fill) -> None:
        """Move cash and the position for one fill."""
        self.cash += fill.cash_delta
        old = self._qty.get(fill.symbol, Decimal(0))
        new = old + fill.signed_qty
        avg = self._avg.get(fill.symbol, Decimal(0))
        if new == 0:
            avg = Decimal(0)
        elif old == 0 or (old > 0) != (new > 0):  # opened, or flipped through zero
            avg = fill.price
        elif abs(new) > abs(old):  # added to the same side: weighted average entry
            avg = (avg * abs(old) + fill.price * fill.qty) / abs(new)
        self._qty[fill.symbol] = new
        self._avg[fill.symbol] = avg

    def split(self, split: Split) -> None:
        """Scale a position by a split: `ratio` times the shares at 1/`ratio` the entry price; cash stays."""
        qty = self._qty.get(split.symbol, Decimal(0))
        if qty != 0:
            self._qty[split.symbol] = split_qty(qty, split.ratio)
            self._avg[split.symbol] = money(
                self._avg[split.symbol] * split.ratio.denominator / split.ratio.numerator
            )

    def qty(self, symbol: str) -> Decimal:
        """Signed position in `symbol` (0 when flat)."""
        return self._qty.get(symbol, Decimal(0))

    def position(self, symbol: str) -> Position:
        """The position in `symbol`, quantity 0 when flat."""
        return Position(symbol, self.qty(symbol), self._avg.get(symbol, Decimal(0)))

    @property
    def quantities(self) -> Mapping[str, Decimal]:
        """Signed quantity by symbol, live and read-only (a flat symbol may show as 0): no copy, no sort."""
        return MappingProxyType(self._qty)

    def positions(self) -> dict[str, Position]:
        """Open positions by symbol."""
        return {
            s: Position(s, q, self._avg.get(s, Decimal(0))) for s, q in sorted(self._qty.items()) if q != 0
        }

    def positions_value(self, marks: Mapping[str, Decimal]) -> Decimal:
        """Signed market value of positions at `marks`; a position without a mark is an error."""
        total = Decimal(0)
        for symbol, qty in self._qty.items():
            if qty != 0:
                if symbol not in marks:
                    raise KeyError(f"no mark price for open position {symbol}")
                total += qty * marks[symbol]
        return total

    def equity(self, marks: Mapping[str, Decimal]) -> Decimal:
        """Cash plus positions marked to market."""
        return self.cash + self.positions_value(marks)
