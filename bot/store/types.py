"""Column types that behave the same on SQLite and PostgreSQL.

SQLite has no exact decimal type (NUMERIC columns come back as binary floats) and forgets the time zone
of DATETIME values, so money and timestamps need explicit handling to read back exactly what was written
on both backends.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Context, Decimal, Inexact, InvalidOperation
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.types import DateTime, Numeric, String, TypeDecorator, TypeEngine

MONEY_PRECISION = 30
"""Total significant digits of an `ExactDecimal` (as in NUMERIC(30, 10))."""

MONEY_SCALE = 10
"""Fractional digits of an `ExactDecimal`; a value needing more is refused, never rounded."""

_QUANTUM = Decimal(1).scaleb(-MONEY_SCALE)
# Default decimal contexts hold 28 digits, fewer than the 30 a column allows; Inexact turns any rounding
# into an error so a value is stored exactly or not at all.
_EXACT = Context(prec=MONEY_PRECISION + 10, traps=[Inexact, InvalidOperation])


def to_money(value: object) -> Decimal:
    """`value` as a Decimal with exactly `MONEY_SCALE` fractional digits, as an `ExactDecimal` stores it.

    Raises TypeError for anything but Decimal or int (a float already lost the exact value), and
    ValueError for NaN/infinity, more than `MONEY_SCALE` significant fractional digits, or more than
    `MONEY_PRECISION - MONEY_SCALE` integer digits (NUMERIC(30, 10) on PostgreSQL would overflow).
    """
    # bool is an int subclass, but True as an amount is always a bug.
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise TypeError(f"money must be Decimal or int, not {type(value).__name__}: {value!r}")
    amount = Decimal(value)
    if not amount.is_finite():
        raise ValueError(f"money must be finite, got {amount}")
    try:
        quantized = amount.quantize(_QUANTUM, context=_EXACT)
    except Inexact:
        raise ValueError(f"{amount} has more than {MONEY_SCALE} fractional digits") from None
    except InvalidOperation:
        raise ValueError(f"{amount} does not fit NUMERIC({MONEY_PRECISION}, {MONEY_SCALE})") from None
    if len(quantized.as_tuple().digits) > MONEY_PRECISION:
        raise ValueError(f"{amount} does not fit NUMERIC({MONEY_PRECISION}, {MONEY_SCALE})")
    # PostgreSQL has no negative zero; drop the sign so both backends return the same value.
    return quantized.copy_abs() if quantized.is_zero() else quantized


class ExactDecimal(TypeDecorator[Decimal]):
    """Exact money and quantities: NUMERIC(30, 10) on PostgreSQL, plain decimal text on SQLite.

    Binds Decimal or int only (see `to_money`) and reads back a Decimal with exactly 10 fractional
    digits on every backend, so both store and return the same number. On SQLite the column is text:
    compare, sort and sum money in Python, not in SQL, because SQLite would compare strings or floats.
    """

    impl = String(48)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        """NUMERIC(30, 10) where the backend has an exact decimal, VARCHAR(48) text elsewhere."""
        if dialect.name == "postgresql":
            return dialect.type_descriptor(Numeric(MONEY_PRECISION, MONEY_SCALE, asdecimal=True))
        return dialect.type_descriptor(String(48))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Decimal | str | None:
        """Validate and normalise a bound value; text without exponent on the string backends."""
        if value is None:
            return None
        amount = to_money(value)
        return amount if dialect.name == "postgresql" else format(amount, "f")

    def process_literal_param(self, value: Any, dialect: Dialect) -> str:
        """Render a literal (offline SQL, compiled defaults) the way a bound value would be stored."""
        if value is None:
            return "NULL"
        text = format(to_money(value), "f")
        return text if dialect.name == "postgresql" else f"'{text}'"

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        """A Decimal with `MONEY_SCALE` fractional digits, whichever form the driver returned."""
        if value is None:
            return None
        if isinstance(value, float):
            # Only a write that bypassed this type can leave a float here; refuse rather than guess.
            raise TypeError(f"money column holds a binary float {value!r}; it was not written as money")
        return to_money(Decimal(value) if isinstance(value, str) else value)

    @property
    def python_type(self) -> type[Decimal]:
        """Decimal, for tools that introspect column types."""
        return Decimal


class UTCDateTime(TypeDecorator[datetime]):
    """An instant in time: binds aware datetimes only and always reads back aware UTC.

    PostgreSQL stores TIMESTAMP WITH TIME ZONE; SQLite stores the UTC wall time as text (which also
    sorts chronologically). Naive datetimes are refused because their instant is a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        """Convert an aware datetime to UTC (naive UTC where the backend drops the offset anyway)."""
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, not {type(value).__name__}: {value!r}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} refused: attach a time zone")
        instant = value.astimezone(UTC)
        # SQLite's DATETIME text has no offset field; make the UTC convention explicit, not implicit.
        return instant if dialect.name == "postgresql" else instant.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        """An aware UTC datetime: naive values from SQLite are UTC by construction."""
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the driver, not {type(value).__name__}")
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @property
    def python_type(self) -> type[datetime]:
        """datetime, for tools that introspect column types."""
        return datetime
