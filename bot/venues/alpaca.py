"""The wire to Alpaca through alpaca-py 0.44: REST (trading, market data) and the two websockets, with
paper trading forced, keys from the environment, and every answer turned into paperbot's values.

What alpaca-py does on its own and what is done about it here:
- its REST client retries 429 and 504 three times, 3 s apart, on every call, POST /v2/orders included, so
  a 504 re-posts an order: the client that sends orders has that retry switched off (its constructor
  ignores 0, so the attribute is set after construction); reads keep it;
- it sets no request timeout: each client gets a session with one;
- `APIError.code`/`.message` raise on a body that is not JSON (a gateway's HTML 504): only the status code
  and the raw text are read;
- its streams' `run()` calls `asyncio.run`: they run inside the daemon's loop through `_run_forever()`, and
  a subclass reports each (re)connection, which the client does not.
Blocking REST calls run in threads, never on the loop."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import requests
from alpaca.common.exceptions import APIError
from alpaca.data.enums import DataFeed
from alpaca.data.historical.crypto import CryptoHistoricalDataClient
from alpaca.data.historical.stock import StockHistoricalDataClient
from alpaca.data.live.crypto import CryptoDataStream
from alpaca.data.live.stock import StockDataStream
from alpaca.data.requests import CryptoBarsRequest, StockBarsRequest
from alpaca.data.timeframe import TimeFrame
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import GetCalendarRequest, GetOrdersRequest, MarketOrderRequest
from alpaca.trading.stream import TradingStream

from bot.bars import Bar
from bot.errors import ConfigError
from bot.feeds.sessions import NEW_YORK, Session
from bot.orders import BrokerOrder, Side
from bot.venues.alpaca_json import order_from, parse_time
from bot.venues.base import VenueError

KEY_ENV = "APCA_API_KEY_ID"
SECRET_ENV = "APCA_API_SECRET_KEY"
MINUTE = timedelta(minutes=1)

_TITLE = re.compile(r"<title>(.*?)</title>", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Keys:
    """The API key pair. The secret never prints: not in a repr, a log line or an error."""

    key_id: str
    secret: str = field(repr=False)


def keys_from_env(section: str) -> Keys:
    """The keys from APCA_API_KEY_ID and APCA_API_SECRET_KEY; ConfigError naming `section` when unset."""
    key_id, secret = os.environ.get(KEY_ENV, ""), os.environ.get(SECRET_ENV, "")
    if not key_id or not secret:
        raise ConfigError(section, f"Alpaca needs {KEY_ENV} and {SECRET_ENV} in the environment")
    return Keys(key_id, secret)


def minute_bar(symbol: str, data: Mapping[str, Any]) -> Bar:
    """A minute bar, from REST (`t` a string) or the stream (`t` a msgpack Timestamp)."""
    t = data["t"]
    ts = parse_time(t) if isinstance(t, str) else t.to_datetime().astimezone(UTC)
    return Bar(
        symbol,
        ts,
        float(data["o"]),
        float(data["h"]),
        float(data["l"]),
        float(data["c"]),
        float(data["v"]),
        MINUTE,
    )


@dataclass(frozen=True, slots=True)
class Clock:
    """Alpaca's clock: the venue's time and whether the market is open."""

    ts: datetime
    is_open: bool
    next_open: datetime
    next_close: datetime


class _TimeoutSession(requests.Session):
    """A requests session whose every request has a timeout (alpaca-py passes none)."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout)
        return super().request(*args, **kwargs)


def _error(exc: Exception) -> VenueError:
    if isinstance(exc, APIError):
        text = str(exc)
        try:
            message = str(json.loads(text).get("message", text))
        except (ValueError, AttributeError):  # a gateway's HTML page: its title says enough
            title = _TITLE.search(text)
            message = title.group(1) if title else "no JSON in the answer"
        return VenueError("alpaca", exc.status_code, message)
    return VenueError("alpaca", None, type(exc).__name__)


class _Blocking:
    """Runs a blocking alpaca-py call in a thread, one at a time per client, with errors translated. The
    clients run with raw_data, so what comes back is the JSON Alpaca sent."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        async with self._lock:  # a requests session is not meant to be shared between threads
            try:
                return await asyncio.to_thread(fn, *args)
            except (APIError, requests.RequestException) as exc:
                raise _error(exc) from None


class TradingRest:
    """The trading API (paper only): account, clock, calendar, assets, orders, positions, activities."""

    def __init__(self, url: str, keys: Keys, timeout: float) -> None:
        self._reads = TradingClient(keys.key_id, keys.secret, paper=True, raw_data=True, url_override=url)
        self._orders = TradingClient(keys.key_id, keys.secret, paper=True, raw_data=True, url_override=url)
        self._orders._retry = 0  # a retried POST after a 504 would be a second order
        for client in (self._reads, self._orders):
            client._session = _TimeoutSession(timeout)
        self._read_lock, self._order_lock = _Blocking(), _Blocking()

    async def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return await self._read_lock.call(self._reads.get, path, params)

    async def clock(self) -> Clock:
        """GET /v2/clock."""
        data = await self._get("/clock")
        return Clock(
            parse_time(data["timestamp"]),
            bool(data["is_open"]),
            parse_time(data["next_open"]),
            parse_time(data["next_close"]),
        )

    async def calendar(self, start: date, end: date) -> list[Session]:
        """Regular sessions from `start` to `end` (inclusive), in UTC."""
        request = GetCalendarRequest(start=start, end=end)
        rows = await self._read_lock.call(self._reads.get_calendar, request)
        sessions = []
        for row in rows:
            day = date.fromisoformat(row["date"])
            opens, closes = (time.fromisoformat(row[k]) for k in ("open", "close"))
            sessions.append(
                Session(
                    day,
                    datetime.combine(day, opens, NEW_YORK).astimezone(UTC),
                    datetime.combine(day, closes, NEW_YORK).astimezone(UTC),
                )
            )
        return sessions

    async def account(self) -> dict[str, Any]:
        """GET /v2/account, raw."""
        return dict(await self._get("/account"))

    async def positions(self) -> list[dict[str, Any]]:
        """GET /v2/positions, raw."""
        return list(await self._get("/positions"))

    async def asset(self, symbol: str) -> dict[str, Any]:
        """GET /v2/assets/{symbol}, raw."""
        return dict(await self._get(f"/assets/{symbol}"))

    async def submit(
        self, symbol: str, qty: Decimal, side: Side, tif: str, client_order_id: str
    ) -> BrokerOrder:
        """POST /v2/orders, once: a market order for `qty` with paperbot's client order id."""
        request = MarketOrderRequest(
            symbol=symbol,
            qty=float(qty) if qty != qty.to_integral_value() else int(qty),
            side=OrderSide.BUY if side is Side.BUY else OrderSide.SELL,
            time_in_force=TimeInForce(tif),
            client_order_id=client_order_id,
        )
        return order_from(await self._order_lock.call(self._orders.submit_order, request))

    async def order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        """The order with this client order id, None when Alpaca has none (404)."""
        try:
            data = await self._read_lock.call(self._reads.get_order_by_client_id, client_order_id)
        except VenueError as exc:
            if exc.status == 404:
                return None
            raise
        return order_from(data)

    async def order(self, order_id: str) -> dict[str, Any]:
        """GET /v2/orders/{id}, raw."""
        return dict(await self._get(f"/orders/{order_id}"))

    async def open_orders(self) -> list[BrokerOrder]:
        """Every open order (at most 500, Alpaca's page)."""
        request = GetOrdersRequest(status=QueryOrderStatus.OPEN, limit=500)
        return [order_from(o) for o in await self._read_lock.call(self._reads.get_orders, request)]

    async def cancel(self, order_id: str) -> None:
        """DELETE /v2/orders/{id}."""
        await self._order_lock.call(self._orders.cancel_order_by_id, order_id)

    async def fills(self, after: datetime) -> list[dict[str, Any]]:
        """FILL activities after `after`, oldest first, every page."""
        rows: list[dict[str, Any]] = []
        params: dict[str, Any] = {"after": after.isoformat(), "direction": "asc", "page_size": 100}
        while True:
            page = list(await self._get("/account/activities/FILL", params))
            rows.extend(page)
            if len(page) < params["page_size"]:
                return rows
            params = {**params, "page_token": page[-1]["id"]}


class MarketDataRest:
    """Historical minute bars, stocks (`feed` iex or sip) or crypto."""

    def __init__(self, asset_class: str, url: str, keys: Keys, data_feed: str, timeout: float) -> None:
        self._crypto = asset_class == "crypto"
        client: StockHistoricalDataClient | CryptoHistoricalDataClient
        if self._crypto:
            client = CryptoHistoricalDataClient(keys.key_id, keys.secret, raw_data=True, url_override=url)
        else:
            client = StockHistoricalDataClient(keys.key_id, keys.secret, raw_data=True, url_override=url)
        client._session = _TimeoutSession(timeout)
        self._client = client
        self._feed = DataFeed(data_feed)
        self._lock = _Blocking()

    async def minutes(self, symbols: Sequence[str], start: datetime, end: datetime) -> dict[str, list[Bar]]:
        """Minute bars with start <= t < end, per symbol, oldest first (alpaca-py follows the pages)."""
        if self._crypto:
            crypto = CryptoBarsRequest(
                symbol_or_symbols=list(symbols), timeframe=TimeFrame.Minute, start=start, end=end
            )
            raw = await self._lock.call(self._client.get_crypto_bars, crypto)  # type: ignore[union-attr]
        else:
            stock = StockBarsRequest(
                symbol_or_symbols=list(symbols),
                timeframe=TimeFrame.Minute,
                start=start,
                end=end,
                feed=self._feed,
            )
            raw = await self._lock.call(self._client.get_stock_bars, stock)  # type: ignore[union-attr]
        out: dict[str, list[Bar]] = {s: [] for s in symbols}
        for symbol, rows in dict(raw).items():
            if symbol in out:
                out[symbol] = sorted(
                    (b for b in (minute_bar(symbol, r) for r in rows) if start <= b.ts < end),
                    key=lambda b: b.ts,
                )
        return out


class _Reports:
    """A data stream that says when it has (re)connected: alpaca-py reconnects by itself, silently."""

    _on_connect: Callable[[], None]

    async def _start_ws(self) -> None:
        await super()._start_ws()  # type: ignore[misc]
        self._on_connect()


class _StockStream(_Reports, StockDataStream):
    pass


class _CryptoStream(_Reports, CryptoDataStream):
    pass


Handler = Callable[[dict[str, Any]], Awaitable[None]]
BarHandler = Callable[[Bar], Awaitable[None]]


class DataStream:
    """The market-data websocket (minute bars and their corrections) inside the daemon's loop. alpaca-py
    reconnects by itself, with backoff; `on_connect` hears of every connection."""

    def __init__(
        self,
        asset_class: str,
        url: str,
        keys: Keys,
        data_feed: str,
        symbols: Sequence[str],
        *,
        on_bar: BarHandler,
        on_update: BarHandler,
        on_connect: Callable[[], None],
    ) -> None:
        common: dict[str, Any] = {
            "api_key": keys.key_id,
            "secret_key": keys.secret,
            "raw_data": True,
            "url_override": url,
        }
        stream: _StockStream | _CryptoStream
        if asset_class == "crypto":
            stream = _CryptoStream(**common)
        else:
            stream = _StockStream(**common, feed=DataFeed(data_feed))
        stream._on_connect = on_connect

        async def bar(data: Any) -> None:
            await on_bar(minute_bar(data["S"], data))

        async def update(data: Any) -> None:
            await on_update(minute_bar(data["S"], data))

        stream.subscribe_bars(bar, *symbols)
        stream.subscribe_updated_bars(update, *symbols)
        self._stream = stream

    async def run(self) -> None:
        """Until `stop()`."""
        await self._stream._run_forever()

    async def reconnect(self) -> None:
        """Drop the socket: the client reconnects by itself (a silent socket is not trusted)."""
        ws: Any = getattr(self._stream, "_ws", None)
        if ws is not None:
            await ws.close()

    async def stop(self) -> None:
        """Stop for good."""
        await self._stream.stop_ws()
        await self._stream.close()


class _TradeUpdates(TradingStream):
    def __init__(self, on_state: Callable[[bool], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_state = on_state

    async def _dispatch(self, msg: dict[str, Any]) -> None:
        # Up once the server confirms the subscription, not when "listen" is sent: an order filled in
        # between would report to a socket that does not listen yet.
        if msg.get("stream") == "listening" and "trade_updates" in (msg.get("data") or {}).get("streams", []):
            self._on_state(True)
        await super()._dispatch(msg)

    async def close(self) -> None:
        was_open = self._ws is not None
        await super().close()
        if was_open:
            self._on_state(False)


class TradeUpdatesStream:
    """The trade_updates websocket (paper) inside the daemon's loop; `on_state` hears it go up and down."""

    def __init__(self, url: str, keys: Keys, *, on_update: Handler, on_state: Callable[[bool], None]) -> None:
        self._stream = _TradeUpdates(
            on_state, api_key=keys.key_id, secret_key=keys.secret, paper=True, raw_data=True, url_override=url
        )
        self._stream.subscribe_trade_updates(on_update)

    async def run(self) -> None:
        """Until `stop()`."""
        await self._stream._run_forever()

    async def stop(self) -> None:
        """Stop for good."""
        await self._stream.stop_ws()
        await self._stream.close()
