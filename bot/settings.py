"""Building blocks of config sections, shared by `bot.config` and each adapter's own `*Config`.

Kept apart from `bot.config` so that a feed or broker module can declare its section without importing
the whole config (which imports every adapter's section to build the discriminated unions)."""

from __future__ import annotations

from decimal import Decimal
from ipaddress import ip_address
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Discriminator, Field, ValidationInfo


class Section(BaseModel):
    """A config section: frozen, and an unknown key is an error, not a silently ignored typo."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def resolve_path(path: Path, info: ValidationInfo) -> Path:
    """`path` made absolute against the config file's folder (passed as validation context)."""
    base = (info.context or {}).get("base_dir")
    return path if path.is_absolute() or base is None else (Path(base) / path).resolve()


def kind_of(default: str) -> Discriminator:
    """The discriminator of a registry's union: the section's `kind`, `default` when the key is left out."""

    def kind(value: Any) -> str:
        return (
            str(value.get("kind", default))
            if isinstance(value, dict)
            else str(getattr(value, "kind", default))
        )

    return Discriminator(kind)


class SymbolRules(Section):
    """One symbol's order rules: `[strategies.risk.symbols.SYMBOL]` in the config, or a venue's market info.
    Unset keys fall back to the strategy's risk settings (and, where the broker publishes market info, to
    that first)."""

    lot_size: Annotated[Decimal, Field(gt=0)] | None = None
    min_qty: Annotated[Decimal, Field(ge=0)] | None = None
    min_notional: Annotated[Decimal, Field(ge=0)] | None = None
    qty_precision: Annotated[int, Field(ge=0, le=10)] | None = None
    price_precision: Annotated[int, Field(ge=0, le=10)] | None = None
    max_position_qty: Annotated[Decimal, Field(gt=0)] | None = None


def is_loopback(url: str) -> bool:
    """True when `url` points at this machine (a test double), whatever its scheme."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def check_paper_url(url: str, hosts: frozenset[str], schemes: frozenset[str]) -> str:
    """`url` if it points at one of a venue's paper or data `hosts` or at loopback, else ValueError.

    Paper only: an override is how a live-money endpoint would slip in, so nothing else is accepted."""
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise ValueError(f"scheme {parts.scheme!r} is not one of {sorted(schemes)}")
    if parts.username or parts.password:
        raise ValueError("credentials do not belong in a URL: they come from the environment")
    if not (is_loopback(url) or (parts.hostname or "") in hosts):
        raise ValueError(
            f"host {parts.hostname!r} is neither loopback nor one of the paper hosts {sorted(hosts)}"
        )
    return url.rstrip("/")
