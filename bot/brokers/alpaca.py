"""Alpaca broker: market orders on Alpaca's paper account, order updates from its trade_updates stream (or
by polling), each submit sent once.

An order is POSTed once with paperbot's client order id. A timeout or a 5xx leaves it UNKNOWN for
reconciliation to settle by that id; a 429 was not taken, so it is sent again after a pause; a 422
"client_order_id must be unique" means Alpaca has it already, and it is adopted; any other refusal is a
rejection. While the trade_updates stream is down nothing is sent, and after it comes back the engine
sweeps Alpaca's records (it does not replay what it missed). Fills carry one id whichever way they
arrive: the order's id and how much of it had filled (the stream and the activities endpoint both say)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, field_validator

from bot.bars import Bar
from bot.brokers.base import Account, BrokerContext, BrokerEvents, BrokerSettings, BrokerStatus
from bot.errors import BrokerError, BrokerUnavailableError, ConfigError, OperationalError
from bot.ledger import Split
from bot.logs import get_logger
from bot.orders import BrokerOrder, Fill, OpenOrder, OrderIntent, OrderStatus, OrderUpdate
from bot.settings import SymbolRules, check_paper_url
from bot.venues.alpaca_json import fill_from_activity, fill_from_event, order_from, parse_time
from bot.venues.base import VenueError

if TYPE_CHECKING:
    from bot.venues.alpaca import TradeUpdatesStream, TradingRest

PAPER_API = "https://paper-api.alpaca.markets"
PAPER_STREAM = "wss://paper-api.alpaca.markets/stream"
_HOSTS = frozenset({"paper-api.alpaca.markets"})
_DUPLICATE = "client_order_id must be unique"


class AlpacaBrokerConfig(BrokerSettings):
    """[broker] kind = "alpaca": Alpaca's paper account (never a live one). `url` and `stream_url` override
    Alpaca's paper endpoints (a loopback host, or Alpaca's paper host, nothing else)."""

    kind: Literal["alpaca"] = "alpaca"
    url: str | None = None
    stream_url: str | None = None
    order_updates: Literal["stream", "poll"] = "stream"
    poll_seconds: Annotated[float, Field(gt=0, le=3600)] = 2.0
    request_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    connect_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 30.0
    rate_limit_retries: Annotated[int, Field(ge=0, le=10)] = 3

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else check_paper_url(value, _HOSTS, frozenset({"https", "http"}))

    @field_validator("stream_url")
    @classmethod
    def _stream_url(cls, value: str | None) -> str | None:
        return None if value is None else check_paper_url(value, _HOSTS, frozenset({"wss", "ws"}))

    def build(self, context: BrokerContext) -> AlpacaBroker:
        """The paper broker; its keys come from the environment."""
        if context.backtest:
            raise ConfigError(
                "broker.kind", 'a backtest fills in the simulated broker: use [broker] kind = "sim"'
            )
        # alpaca-py takes most of a second to import: only the commands that trade pay for it.
        from bot.venues import alpaca as wire  # noqa: PLC0415

        keys = wire.keys_from_env("broker")
        rest = wire.TradingRest(self.url or PAPER_API, keys, self.request_timeout_seconds)

        def stream(broker: AlpacaBroker) -> TradeUpdatesStream:
            return wire.TradeUpdatesStream(
                self.stream_url or PAPER_STREAM, keys, on_update=broker.on_update, on_state=broker.on_stream
            )

        return AlpacaBroker(self, context, rest, stream if self.order_updates == "stream" else None)


class AlpacaBroker:
    """Paper orders at Alpaca."""

    def __init__(
        self,
        config: AlpacaBrokerConfig,
        context: BrokerContext,
        rest: TradingRest,
        stream: Callable[[AlpacaBroker], TradeUpdatesStream] | None,
    ) -> None:
        self._config = config
        self._rest = rest
        self._stream = stream(self) if stream is not None else None
        self._symbols = list(context.symbols)
        # Alpaca writes crypto positions without the slash ("BTCUSD"), orders with it ("BTC/USD").
        self._ours = {s.replace("/", ""): s for s in self._symbols} | {s: s for s in self._symbols}
        self._rules: dict[str, SymbolRules] = {}
        self._tif: dict[str, str] = {}
        self._events = BrokerEvents()
        self._cids: dict[str, str] = {}  # Alpaca's order id -> paperbot's client order id
        self._watching: dict[str, OrderStatus] = {}  # open orders the poller follows (poll mode)
        self._up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._log = get_logger("paperbot.broker.alpaca")

    @property
    def events(self) -> BrokerEvents:
        """Order updates and fills from the trade_updates stream (or the poller), and the stream's state."""
        return self._events

    async def start(self) -> None:
        """Check the account, load each symbol's asset rules, connect the order updates."""
        try:
            account = await self._rest.account()
            for symbol in self._symbols:
                self._learn(symbol, await self._rest.asset(symbol))
        except VenueError as exc:
            if exc.temporary:
                raise BrokerError(f"Alpaca did not answer at start: {exc}") from None
            raise ConfigError("broker", f"Alpaca refused: {exc.message}") from None
        if account.get("status") != "ACTIVE" or account.get("trading_blocked"):
            raise OperationalError(f"the Alpaca paper account cannot trade (status {account.get('status')})")
        if self._stream is not None:
            self._task = asyncio.create_task(self._stream.run(), name="alpaca-trade-updates")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._up.wait(), self._config.connect_timeout_seconds)
            if not self._up.is_set():
                self._log.warning("trade_updates_not_connected", waited=self._config.connect_timeout_seconds)
        else:
            self._task = asyncio.create_task(self._poll(), name="alpaca-poll")

    def _learn(self, symbol: str, asset: dict[str, Any]) -> None:
        if not asset.get("tradable", False):
            raise ConfigError("broker", f"{symbol} is not tradable at Alpaca")
        if asset.get("class") == "crypto":
            self._tif[symbol] = "gtc"
            step = Decimal(str(asset.get("min_trade_increment") or "0.000000001"))
            tick = Decimal(str(asset.get("price_increment") or "0.01"))
            self._rules[symbol] = SymbolRules(
                lot_size=step,
                min_qty=Decimal(str(asset.get("min_order_size") or 0)),
                qty_precision=_places(step),
                price_precision=_places(tick),
            )
        else:
            self._tif[symbol] = "day"  # fractional orders must be day orders
            fractional = bool(asset.get("fractionable"))
            self._rules[symbol] = SymbolRules(
                lot_size=Decimal("0.000000001") if fractional else Decimal(1),
                min_notional=Decimal(1) if fractional else None,
                qty_precision=9 if fractional else 0,
                price_precision=2,
            )

    def restore(
        self, fills: Sequence[Fill], open_orders: Sequence[OpenOrder], splits: Sequence[Split] = ()
    ) -> None:
        """Alpaca keeps its own records; the poller follows the journal's open orders."""
        for order in open_orders:
            if order.broker_order_id is not None:
                self._cids[order.broker_order_id] = order.intent.client_order_id
            self._watching[order.intent.client_order_id] = order.status

    # ---- the trade_updates stream ------------------------------------------------------------------

    async def on_update(self, message: dict[str, Any]) -> None:
        """A trade update: the order's state, and the execution when it filled."""
        data = message.get("data", message)
        raw = data["order"]
        symbol = self._ours.get(raw["symbol"], raw["symbol"])
        order = order_from(raw)
        if data.get("event") == "rejected":
            order = BrokerOrder(
                order.client_order_id, order.broker_order_id, order.status, reason="rejected by Alpaca"
            )
        self._cids[raw["id"]] = order.client_order_id
        self._events.put(OrderUpdate(order, parse_time(data["timestamp"]), fill_from_event(data, symbol)))

    def on_stream(self, up: bool) -> None:
        """The trade_updates stream came up or went down."""
        was_up = self._up.is_set()
        if up:
            self._up.set()
        else:
            self._up.clear()
        if up != was_up:
            self._log.warning("trade_updates", connected=up)
            self._events.put(BrokerStatus(up, datetime.now(UTC), "trade_updates stream"))

    # ---- polling, when order_updates = "poll" --------------------------------------------------------

    async def _poll(self) -> None:
        """Fills since the last one seen (on Alpaca's clock), and the status of each order followed."""
        since = (await self._rest.clock()).ts - timedelta(minutes=1)
        seen: set[str] = set()
        while True:
            await asyncio.sleep(self._config.poll_seconds)
            try:
                for fill in await self.fills_since(since):
                    if fill.broker_fill_id not in seen:
                        seen.add(fill.broker_fill_id)
                        since = max(since, fill.ts - timedelta(seconds=1))
                        self._events.put(OrderUpdate(None, fill.ts, fill))
                for cid, status in list(self._watching.items()):
                    order = await self.order_by_client_id(cid)
                    if order is None or order.status is status:
                        continue
                    self._watching[cid] = order.status
                    if not order.status.is_open:
                        del self._watching[cid]
                    self._events.put(OrderUpdate(order, since))
            except (BrokerError, VenueError) as exc:
                self._log.warning("poll_failed", error=str(exc))

    # ---- orders --------------------------------------------------------------------------------------

    async def submit(self, intent: OrderIntent) -> BrokerOrder:
        """POST the order once (see the module's docstring for what each answer means)."""
        cid = intent.client_order_id
        self._require_stream()
        for attempt in range(self._config.rate_limit_retries + 1):
            try:
                order = await self._rest.submit(
                    intent.symbol, intent.qty, intent.side, self._tif[intent.symbol], cid
                )
            except VenueError as exc:
                if exc.status == 422 and _DUPLICATE in exc.message:
                    known = await self.order_by_client_id(cid)
                    if known is not None:
                        return self._remember(known)
                    raise BrokerError(f"Alpaca says {cid} exists but cannot find it") from None
                if exc.status == 429 and attempt < self._config.rate_limit_retries:
                    await asyncio.sleep(2.0**attempt)  # not taken: safe to send again
                    continue
                if exc.temporary:
                    raise BrokerError(f"submit {cid}: {exc}") from None
                return BrokerOrder(cid, None, OrderStatus.REJECTED, reason=f"{exc.status}: {exc.message}")
            return self._remember(order)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _require_stream(self) -> None:
        """No submit or cancel while the trade_updates stream is down: its answer would go unheard."""
        if self._stream is not None and not self._up.is_set():
            raise BrokerUnavailableError("Alpaca's trade_updates stream is down: nothing sent")

    def _remember(self, order: BrokerOrder) -> BrokerOrder:
        if order.broker_order_id is not None:
            self._cids[order.broker_order_id] = order.client_order_id
        if order.status.is_open:
            self._watching[order.client_order_id] = order.status
        return order

    async def cancel(self, client_order_id: str) -> BrokerOrder:
        """Cancel an open order; the cancellation itself arrives as an update."""
        self._require_stream()
        order = await self.order_by_client_id(client_order_id)
        if order is None or order.broker_order_id is None:
            return BrokerOrder(client_order_id, None, OrderStatus.REJECTED, reason="unknown order")
        try:
            await self._rest.cancel(order.broker_order_id)
        except VenueError as exc:
            if exc.temporary:
                raise BrokerError(f"cancel {client_order_id}: {exc}") from None
            return order
        return await self.order_by_client_id(client_order_id) or order

    async def order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        """GET /v2/orders:by_client_order_id; None when Alpaca never received it."""
        with _asking(f"look up {client_order_id}"):
            order = await self._rest.order_by_client_id(client_order_id)
        return None if order is None else self._remember(order)

    async def open_orders(self) -> list[BrokerOrder]:
        """Every open order of the account."""
        with _asking("open orders"):
            return await self._rest.open_orders()

    async def fills_since(self, ts: datetime) -> list[Fill]:
        """FILL activities from `ts` on, oldest first."""
        fills = []
        with _asking(f"fills since {ts.isoformat()}"):
            for row in await self._rest.fills(ts - timedelta(seconds=1)):  # `after` is exclusive; ids dedupe
                cid = self._cids.get(row["order_id"])
                if cid is None:  # an order this run has not seen: Alpaca knows whose it is
                    cid = str((await self._rest.order(row["order_id"]))["client_order_id"])
                    self._cids[row["order_id"]] = cid
                fills.append(fill_from_activity(row, cid, self._ours.get(row["symbol"], row["symbol"])))
        return [f for f in fills if f.ts >= ts]

    async def positions(self) -> dict[str, Decimal]:
        """Signed quantity by symbol (crypto under paperbot's spelling)."""
        with _asking("positions"):
            rows = await self._rest.positions()
        return {self._ours.get(r["symbol"], r["symbol"]): Decimal(str(r["qty"])) for r in rows}

    async def account(self) -> Account:
        """Cash and positions."""
        with _asking("account"):
            account = await self._rest.account()
        return Account(Decimal(str(account["cash"])), await self.positions())

    def market_rules(self, symbol: str) -> SymbolRules | None:
        """From Alpaca's asset: lot (whole shares, or 1e-9 where fractionable), minimum, precision."""
        return self._rules.get(symbol)

    def observe_bars(self, bars: Sequence[Bar]) -> None:
        """Alpaca fills at its own market."""

    def apply_split(self, split: Split) -> None:
        """Alpaca applies splits to the account itself (reconciliation checks that it agrees)."""

    async def close(self) -> None:
        """Stop the stream or the poller."""
        if self._stream is not None:
            with contextlib.suppress(Exception):
                await self._stream.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


@contextlib.contextmanager
def _asking(what: str) -> Iterator[None]:
    """A question to Alpaca: an answer that is not one (an error, no answer) is a BrokerError, and what it
    was about stays as it was until it can be asked again."""
    try:
        yield
    except VenueError as exc:
        raise BrokerError(f"{what}: {exc}") from None


def _places(step: Decimal) -> int:
    exponent = step.normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0
