"""A fake Alpaca market on 127.0.0.1, spoken to by the real alpaca-py clients through `url_override`.

One `FakeAlpaca` serves, for one asset class ("stock" or "crypto"):

- the Trading REST API (`/v2/account`, `/v2/clock`, `/v2/calendar`, `/v2/assets`, `/v2/orders`,
  `/v2/positions`, `/v2/account/activities`) and the Market Data REST API (`/v2/stocks/bars`,
  `/v1beta3/crypto/us/bars` and their latest-bar endpoints) on one HTTP port: `rest_url` == `data_url`;
- the market-data websocket (msgpack frames, or JSON when the client does not ask for msgpack) at
  `data_stream_url`, and the trade-updates websocket (JSON in binary frames, as the paper endpoint
  sends them) at `trading_stream_url`.

The market is driven by the test: minute bars are stored with `add_history` (silently) or `publish`
(stored and streamed). The venue clock `now` only moves when told (`set_now`) or when a bar is
published (to the end of that minute). A market order fills at the open of the next minute bar
published for its symbol, never at a price the order could not have seen (no look-ahead), and REST bars
only show minutes that have ended on the venue clock.

Simplifications, all deliberate: market orders only (quantity, not notional); no commission or fee
(stocks and crypto alike); a Reg T 1x account (buying power = equity - 100 % margin on every position -
open buy orders), stocks shortable, crypto not; no regulatory fees, corporate actions, or order
replacement.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import json
import logging
import random
import re
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from datetime import time as dtime
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit
from zoneinfo import ZoneInfo

import msgpack  # type: ignore[import-untyped]  # msgpack ships no type information
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

__all__ = ["Execution", "FakeAlpaca", "MinuteBar"]

ET = ZoneInfo("America/New_York")
# The server's own log (connections opened and dropped) is not the daemon's: it goes nowhere, so a test's
# logging set-up (which the daemon's CLI replaces) never sees it, even after the test has ended.
_QUIET = logging.getLogger("fake_alpaca.server")
_QUIET.propagate = False
_QUIET.addHandler(logging.NullHandler())
ONE_MINUTE = timedelta(minutes=1)

# Order statuses Alpaca lists under status=open; everything else is closed.
_OPEN_STATUSES = frozenset(
    {
        "new",
        "partially_filled",
        "accepted",
        "pending_new",
        "accepted_for_bidding",
        "pending_cancel",
        "pending_replace",
        "held",
        "calculated",
        "stopped",
        "suspended",
    }
)
# Statuses in which the fake's matching engine still works an order.
_WORKING = frozenset({"accepted", "new", "partially_filled"})

_NGINX_HTML = {
    502: "502 Bad Gateway",
    504: "504 Gateway Time-out",
}
_JSON_5XX = {
    500: (50010000, "internal server error occurred"),
    503: (50310000, "service unavailable"),
}

_STOCK_CHANNELS = (
    "trades",
    "quotes",
    "bars",
    "updatedBars",
    "dailyBars",
    "statuses",
    "lulds",
    "corrections",
    "cancelErrors",
)
_CRYPTO_CHANNELS = ("trades", "quotes", "orderbooks", "bars", "updatedBars", "dailyBars")
_BAR_CHANNEL = {"b": "bars", "u": "updatedBars", "d": "dailyBars"}

_TIMEFRAME_RE = re.compile(r"^(\d+)(Min|T|Hour|H|Day|D|Week|W|Month|M)$")
_UNIT = {
    "Min": "Min",
    "T": "Min",
    "Hour": "Hour",
    "H": "Hour",
    "Day": "Day",
    "D": "Day",
    "Week": "Week",
    "W": "Week",
    "Month": "Month",
    "M": "Month",
}


@dataclass(frozen=True)
class MinuteBar:
    """One minute bar as the venue reports it: `t` is the minute's start (aware UTC)."""

    t: datetime
    o: float
    h: float
    l: float  # noqa: E741 - Alpaca's wire name
    c: float
    v: float
    n: int = 1
    vw: float | None = None

    def __post_init__(self) -> None:
        if self.t.tzinfo is None:
            raise ValueError("MinuteBar.t must be timezone-aware")
        if self.t.second or self.t.microsecond:
            raise ValueError("MinuteBar.t must be the start of a minute")


@dataclass(frozen=True)
class Execution:
    """One fill of an order: what the FILL activity and the fill/partial_fill trade update report."""

    id: str  # the activity id, "YYYYMMDDHHMMSSmmm::<execution_id>" in New York time
    execution_id: str
    order_id: str
    client_order_id: str
    symbol: str
    side: str
    qty: Decimal
    price: Decimal
    timestamp: datetime
    cum_qty: Decimal
    leaves_qty: Decimal
    order_status: str
    position_qty: Decimal


class _ApiError(Exception):
    """An error reply in Alpaca's shape: HTTP status and `{"code", "message", ...extra}`."""

    def __init__(self, status: int, code: int, message: str, **extra: str) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {**extra, "code": code, "message": message}


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json; charset=UTF-8"
    delay: float = 0.0


@dataclass
class _Order:
    id: str
    client_order_id: str
    symbol: str
    asset_id: str
    asset_class: str
    side: str
    qty: Decimal
    time_in_force: str
    extended_hours: bool
    position_intent: str
    created_at: datetime
    expires_at: datetime | None
    fractions: tuple[Decimal, ...]
    increment: Decimal
    seq: int
    status: str = "accepted"
    updated_at: datetime | None = None
    filled_at: datetime | None = None
    expired_at: datetime | None = None
    canceled_at: datetime | None = None
    failed_at: datetime | None = None
    filled_qty: Decimal = Decimal(0)
    filled_value: Decimal = Decimal(0)
    executions: int = 0
    last_exec_t: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        avg = None if self.filled_qty == 0 else _num(self.filled_value / self.filled_qty)
        return {
            "id": self.id,
            "client_order_id": self.client_order_id,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at or self.created_at),
            "submitted_at": _iso(self.created_at),
            "filled_at": _iso_or_none(self.filled_at),
            "expired_at": _iso_or_none(self.expired_at),
            "canceled_at": _iso_or_none(self.canceled_at),
            "failed_at": _iso_or_none(self.failed_at),
            "replaced_at": None,
            "replaced_by": None,
            "replaces": None,
            "asset_id": self.asset_id,
            "symbol": self.symbol,
            "asset_class": self.asset_class,
            "notional": None,
            "qty": _num(self.qty),
            "filled_qty": _num(self.filled_qty),
            "filled_avg_price": avg,
            "order_class": "",
            "order_type": "market",
            "type": "market",
            "side": self.side,
            "position_intent": self.position_intent,
            "time_in_force": self.time_in_force,
            "limit_price": None,
            "stop_price": None,
            "status": self.status,
            "extended_hours": self.extended_hours,
            "legs": None,
            "trail_percent": None,
            "trail_price": None,
            "hwm": None,
            "subtag": None,
            "source": None,
            "expires_at": _iso_or_none(self.expires_at),
        }


@dataclass
class _Position:
    qty: Decimal
    avg_entry_price: Decimal


@dataclass(eq=False)
class _WsClient:
    """One websocket connection: an outgoing queue keeps frames in order without blocking the producer."""

    ws: ServerConnection
    kind: str  # "stock", "crypto" or "trading"
    use_msgpack: bool
    queue: asyncio.Queue[bytes | str | None] = field(default_factory=asyncio.Queue)
    authenticated: bool = False
    listening: bool = False
    subs: dict[str, set[str]] = field(default_factory=dict)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _iso_or_none(dt: datetime | None) -> str | None:
    return None if dt is None else _iso(dt)


def _num(value: Decimal) -> str:
    """A decimal as Alpaca writes numbers in JSON strings: plain notation, no trailing zeros."""
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def _dec(value: Any) -> Decimal:
    """Decimal from a JSON number or string; floats through their shortest repr so 0.1 stays 0.1."""
    if isinstance(value, bool):
        raise InvalidOperation(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(str(value))


def _parse_time(text: str, *, end_of_day: bool = False) -> datetime:
    """RFC 3339 (an unescaped '+' arrives as a space) or a bare date, which means UTC midnight."""
    text = text.strip().replace(" ", "+")
    if len(text) == 10:
        day = date.fromisoformat(text)
        start = datetime.combine(day, dtime(0), UTC)
        return start + timedelta(days=1) - timedelta(microseconds=1) if end_of_day else start
    dt = datetime.fromisoformat(text)
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _nginx_page(title: str) -> bytes:
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n"
        "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    ).encode()


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _bar_json(bar: MinuteBar, integral_volume: bool) -> dict[str, Any]:
    """A bar's wire fields; `t` stays a datetime (JSON and msgpack write it differently)."""
    v = bar.v
    volume: float | int = int(v) if integral_volume and float(v).is_integer() else v
    vw = bar.vw if bar.vw is not None else bar.c
    return {
        "t": bar.t.astimezone(UTC),
        "o": bar.o,
        "h": bar.h,
        "l": bar.l,
        "c": bar.c,
        "v": volume,
        "n": bar.n,
        "vw": vw,
    }


def _combine(label: datetime, bars: Sequence[MinuteBar]) -> MinuteBar:
    """Aggregate consecutive minutes into one bar labelled `label`; vw is volume-weighted."""
    volume = sum(b.v for b in bars)
    last = bars[-1]
    vw = (
        sum((b.vw if b.vw is not None else b.c) * b.v for b in bars) / volume
        if volume
        else (last.vw if last.vw is not None else last.c)
    )
    return MinuteBar(
        label,
        bars[0].o,
        max(b.h for b in bars),
        min(b.l for b in bars),
        last.c,
        volume,
        sum(b.n for b in bars),
        vw,
    )


class _HTTPServer(ThreadingHTTPServer):
    """Threaded HTTP/1.1 server whose open keep-alive sockets can be cut at shutdown, so threads join."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, fake: FakeAlpaca) -> None:
        self.fake = fake
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    """Reads a request, lets the fake answer it, writes the answer; no logic of its own."""

    protocol_version = "HTTP/1.1"
    server_version = "nginx"
    sys_version = ""
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests read `FakeAlpaca.requests` instead."""

    def do_GET(self) -> None:
        """Answer a GET."""
        self._serve("GET")

    def do_POST(self) -> None:
        """Answer a POST."""
        self._serve("POST")

    def do_DELETE(self) -> None:
        """Answer a DELETE."""
        self._serve("DELETE")

    def do_PATCH(self) -> None:
        """Answer a PATCH."""
        self._serve("PATCH")

    def do_PUT(self) -> None:
        """Answer a PUT."""
        self._serve("PUT")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        fake = self.server.fake
        reply = fake._handle_http(method, self.path, self.headers, body)
        if reply.delay > 0:
            # Waits on the stop event so shutting the fake down never waits out a long delay.
            fake._stopping.wait(reply.delay)
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("X-Request-ID", uuid.uuid4().hex)
            if reply.status != 204:
                self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if reply.status != 204 and reply.body:
                self.wfile.write(reply.body)
        except OSError:
            # The client gave up (its own timeout): nothing more to say on this socket.
            self.close_connection = True


class FakeAlpaca:
    """A deterministic fake of Alpaca's paper trading and market-data APIs for one asset class.

    Use it as a context manager; every public method is thread-safe and may be called from the test
    thread or from any asyncio loop (none of them waits on the loop that runs the websockets for long).
    """

    def __init__(
        self,
        *,
        key: str = "test-key-id",
        secret: str = "test-secret-key",
        asset_class: Literal["stock", "crypto"] = "stock",
        cash: Decimal | int | str = Decimal("100000"),
        assets: Mapping[str, Mapping[str, Any]] | None = None,
        calendar: Iterable[tuple[date, dtime | str, dtime | str]] | None = None,
        now: datetime | None = None,
        seed: int = 0,
    ) -> None:
        """Configure the fake; `start` (or `with`) opens its ports.

        `assets` overrides per-symbol asset fields (fractionable, shortable, min_order_size,
        min_trade_increment, price_increment, ...) and declares those symbols tradable; symbols also come
        into being when bars are stored for them. `calendar` lists the trading sessions (date, open, close)
        in New York time; dates outside its first..last range follow the default Monday-Friday
        09:30-16:00. `now` starts the venue clock (default: the wall clock, to the second). `seed` makes
        every generated id reproducible.
        """
        if asset_class not in ("stock", "crypto"):
            raise ValueError("asset_class must be 'stock' or 'crypto'")
        self.key = key
        self.secret = secret
        self.asset_class = asset_class
        self._crypto = asset_class == "crypto"
        self._lock = threading.RLock()
        self._rng = random.Random(seed)
        self._account_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"fake-alpaca/{key}"))
        start_now = now if now is not None else datetime.now(UTC).replace(microsecond=0)
        if start_now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        self._now = start_now.astimezone(UTC)
        self._created = self._now
        self._cash = _dec(cash)
        self._last_equity = self._cash
        self._calendar: dict[date, tuple[datetime, datetime]] = {}
        self._session_cache: dict[date, tuple[datetime, datetime] | None] = {}
        self._cal_range: tuple[date, date] | None = None
        if calendar is not None:
            for day, open_t, close_t in calendar:
                self._calendar[day] = (self._at(day, open_t), self._at(day, close_t))
            if self._calendar:
                self._cal_range = (min(self._calendar), max(self._calendar))
            else:
                self._cal_range = (date.min, date.max)
        self._asset_overrides: dict[str, dict[str, Any]] = {}
        self._assets: dict[str, dict[str, Any]] = {}
        for symbol, fields in (assets or {}).items():
            self._asset_overrides[self._canon(symbol)] = dict(fields)
            self._ensure_asset(symbol)
        self._bars: dict[str, dict[datetime, MinuteBar]] = {}
        self._bar_times: dict[str, list[datetime]] = {}
        self._orders: dict[str, _Order] = {}  # by order id, in submission order
        self._by_cid: dict[str, _Order] = {}
        self._working: dict[str, _Order] = {}  # orders the engine still works, in submission order
        self._positions: dict[str, _Position] = {}
        self._executions: list[Execution] = []
        self._order_posts: list[Any] = []
        self._requests: list[tuple[str, str, dict[str, str]]] = []
        self._server_errors: list[str] = []
        self._reject_reasons: dict[str, str] = {}
        self._seq = 0
        self._partial_fills: tuple[Decimal, ...] = (Decimal(1),)
        # Faults.
        self._fail_next: tuple[int, bool] | None = None
        self._delay_next: float = 0.0
        self._reject_next: str | None = None
        self._respond_429 = 0
        self._muted = False
        # Websocket side; touched only on the loop thread except the counters (under the lock).
        self._data_clients: set[_WsClient] = set()
        self._trading_clients: set[_WsClient] = set()
        self._data_auths = 0
        self._data_rejections = 0
        self._trading_auths = 0
        # Lifecycle.
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._ws_server: Server | None = None
        self._http: _HTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self.rest_url = ""
        self.data_url = ""
        self.data_stream_url = ""
        self.trading_stream_url = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeAlpaca:
        """Open the HTTP and websocket ports on 127.0.0.1 and fill in the URL attributes."""
        if self._loop is not None:
            raise RuntimeError("FakeAlpaca already started")
        self._stopping.clear()
        loop = asyncio.new_event_loop()
        started = threading.Event()
        port_box: list[int] = []
        errors: list[BaseException] = []

        def run_loop() -> None:
            asyncio.set_event_loop(loop)

            async def open_ws() -> None:
                self._ws_server = await serve(
                    self._ws_handler,
                    "127.0.0.1",
                    0,
                    process_request=self._ws_process_request,
                    compression=None,
                    close_timeout=1,
                    ping_interval=None,
                    logger=_QUIET,
                )
                port_box.append(self._ws_server.sockets[0].getsockname()[1])

            try:
                loop.run_until_complete(open_ws())
            except BaseException as exc:  # reported to start(), which re-raises it
                errors.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()

        self._loop = loop
        self._loop_thread = threading.Thread(target=run_loop, name="fake-alpaca-ws", daemon=True)
        self._loop_thread.start()
        started.wait(10)
        if errors or not port_box:
            self._loop_thread.join(5)
            loop.close()
            self._loop = None
            raise RuntimeError("fake websocket server did not start") from (errors[0] if errors else None)
        ws_port = port_box[0]
        self._http = _HTTPServer(self)
        http_port = self._http.server_address[1]
        self._http_thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-alpaca-http",
            daemon=True,
        )
        self._http_thread.start()
        self.rest_url = f"http://127.0.0.1:{http_port}"
        self.data_url = self.rest_url
        feed_path = "/v1beta3/crypto/us" if self._crypto else "/v2/iex"
        self.data_stream_url = f"ws://127.0.0.1:{ws_port}{feed_path}"
        self.trading_stream_url = f"ws://127.0.0.1:{ws_port}/stream"
        return self

    def stop(self) -> None:
        """Close every connection and port and join the threads; idempotent."""
        self._stopping.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.cut_connections()
            self._http.server_close()
            if self._http_thread is not None:
                self._http_thread.join(10)
            self._http = None
            self._http_thread = None
        loop = self._loop
        if loop is not None:
            if loop.is_running():
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(self._close_ws(), loop).result(10)
                loop.call_soon_threadsafe(loop.stop)
            if self._loop_thread is not None:
                self._loop_thread.join(10)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._loop = None
            self._loop_thread = None

    def __enter__(self) -> FakeAlpaca:
        """Start the fake."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop the fake."""
        self.stop()

    async def _close_ws(self) -> None:
        if self._ws_server is not None:
            self._ws_server.close()
            await self._ws_server.wait_closed()
            self._ws_server = None
        # Handlers have returned; cancel anything still pending (writers of aborted sockets).
        current = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # ------------------------------------------------------------------ market driving

    @property
    def now(self) -> datetime:
        """The venue clock (aware UTC)."""
        with self._lock:
            return self._now

    def set_now(self, dt: datetime) -> None:
        """Set the venue clock; moving forward opens/expires orders as the calendar says."""
        if dt.tzinfo is None:
            raise ValueError("set_now needs an aware datetime")
        with self._lock:
            self._advance(dt.astimezone(UTC))

    def add_history(self, symbol: str, bars: Iterable[MinuteBar]) -> None:
        """Store minute bars without streaming them, filling nothing and leaving the clock alone.

        REST shows a stored minute only once the venue clock has passed its end.
        """
        with self._lock:
            sym = self._ensure_asset(symbol)
            for bar in bars:
                self._store(sym, bar)

    def publish(self, symbol: str, bar: MinuteBar) -> None:
        """Store a minute bar, stream it as "b" (unless muted), fill at its open, move the clock past it."""
        self.publish_many([(symbol, bar)])

    def publish_many(self, items: Iterable[tuple[str, MinuteBar]]) -> None:
        """`publish` for several bars in order; each data client gets one frame with its share."""
        with self._lock:
            msgs: list[dict[str, Any]] = []
            for symbol, bar in items:
                sym = self._ensure_asset(symbol)
                self._store(sym, bar)
                msgs.append(self._bar_msg("b", sym, bar))
                daily = self._daily_msg(sym, bar) if self._wants("dailyBars", sym) else None
                self._fill_at(sym, bar)
                self._advance(max(self._now, bar.t.astimezone(UTC) + ONE_MINUTE))
                if daily is not None:
                    msgs.append(daily)
            if not self._muted:
                self._schedule_data(msgs)

    def publish_update(self, symbol: str, bar: MinuteBar) -> None:
        """Replace a stored minute (late trades) and stream it as an updated bar "u" with the same `t`."""
        with self._lock:
            sym = self._ensure_asset(symbol)
            self._store(sym, bar)
            if not self._muted:
                self._schedule_data([self._bar_msg("u", sym, bar)])

    @property
    def partial_fills(self) -> list[float]:
        """Fractions of each order's qty filled at successive published minutes; [1.0] by default."""
        with self._lock:
            return [float(f) for f in self._partial_fills]

    @partial_fills.setter
    def partial_fills(self, fractions: Sequence[float | Decimal | str]) -> None:
        parts = tuple(_dec(f) for f in fractions)
        if not parts or any(p <= 0 for p in parts) or abs(sum(parts, Decimal(0)) - 1) > Decimal("1e-9"):
            raise ValueError("partial_fills must be positive fractions summing to 1")
        with self._lock:
            self._partial_fills = parts

    def set_position(
        self, symbol: str, qty: Decimal | int | str, avg_entry_price: Decimal | None = None
    ) -> None:
        """Change a position behind the client's back (no order, no cash); qty 0 removes it."""
        with self._lock:
            sym = self._ensure_asset(symbol)
            q = _dec(qty)
            if q == 0:
                self._positions.pop(sym, None)
                return
            old = self._positions.get(sym)
            if avg_entry_price is not None:
                avg = _dec(avg_entry_price)
            elif old is not None:
                avg = old.avg_entry_price
            else:
                avg = self._last_price(sym) or Decimal(0)
            self._positions[sym] = _Position(q, avg)

    # ------------------------------------------------------------------ faults

    def fail_next_submit(self, status: int = 504, accept: bool = True) -> None:
        """Answer the next POST /v2/orders with `status` (504/502: nginx's HTML page; 500/503: JSON).

        With accept=True the order is processed as usual first (created, and it will fill), as when a
        gateway times out after the order engine took the order; with accept=False it never reaches it.
        """
        with self._lock:
            self._fail_next = (status, accept)

    def delay_next_submit(self, seconds: float) -> None:
        """Answer the next POST /v2/orders `seconds` late; the order is created before the wait."""
        with self._lock:
            self._delay_next = seconds

    def reject_next_order(self, reason: str = "rejected by the fake") -> None:
        """Accept the next valid order over REST, then reject it ("rejected" trade update and status)."""
        with self._lock:
            self._reject_next = reason

    def respond_429(self, n: int) -> None:
        """Answer the next `n` REST requests (any endpoint) with 429 rate limit exceeded."""
        with self._lock:
            self._respond_429 = n

    def mute_data(self, muted: bool = True) -> None:
        """Keep data sockets open but send no market data (control replies still go out)."""
        with self._lock:
            self._muted = muted

    def drop_data_connections(self) -> int:
        """Abort every market-data socket as a network drop would (no close frame); returns how many."""
        return self._run_on_loop(self._abort_clients("data"))

    def drop_trading_connections(self) -> int:
        """Abort every trade-updates socket as a network drop would; returns how many."""
        return self._run_on_loop(self._abort_clients("trading"))

    # ------------------------------------------------------------------ introspection

    @property
    def order_posts(self) -> list[Any]:
        """Every POST /v2/orders body received, in order, failed ones included (parsed JSON)."""
        with self._lock:
            return list(self._order_posts)

    @property
    def orders(self) -> dict[str, dict[str, Any]]:
        """Every order the venue holds, as Alpaca's order JSON, keyed by client_order_id."""
        with self._lock:
            return {cid: order.to_json() for cid, order in self._by_cid.items()}

    @property
    def reject_reasons(self) -> dict[str, str]:
        """Why each order rejected by `reject_next_order` was rejected, by client_order_id."""
        with self._lock:
            return dict(self._reject_reasons)

    def positions(self) -> dict[str, Decimal]:
        """Signed position quantities by symbol ("BTC/USD" style for crypto)."""
        with self._lock:
            return {sym: pos.qty for sym, pos in self._positions.items()}

    @property
    def cash(self) -> Decimal:
        """The account's cash."""
        with self._lock:
            return self._cash

    @property
    def executions(self) -> list[Execution]:
        """Every fill, in order."""
        with self._lock:
            return list(self._executions)

    @property
    def data_connections(self) -> int:
        """How many market-data websocket authentications have succeeded so far."""
        with self._lock:
            return self._data_auths

    @property
    def data_rejections(self) -> int:
        """How many market-data connections were refused with 406 connection limit exceeded."""
        with self._lock:
            return self._data_rejections

    @property
    def trading_connections(self) -> int:
        """How many trade-updates websocket authorizations have succeeded so far."""
        with self._lock:
            return self._trading_auths

    @property
    def trading_listeners(self) -> int:
        """Trade-updates sockets currently listening to trade_updates."""
        with self._lock:
            return sum(1 for c in self._trading_clients if c.listening)

    def data_subscribers(self, channel: str, symbol: str) -> int:
        """How many open market-data sockets receive `channel` ("bars", "updatedBars", ...) for `symbol`."""
        sym = self._canon(symbol)
        with self._lock:
            return sum(1 for c in self._data_clients if self._subscribed(c, channel, sym))

    @property
    def requests(self) -> list[tuple[str, str, dict[str, str]]]:
        """Every REST request: (method, path, query with the first value of each key)."""
        with self._lock:
            return list(self._requests)

    @property
    def server_errors(self) -> list[str]:
        """Tracebacks of exceptions inside the fake itself (should stay empty)."""
        with self._lock:
            return list(self._server_errors)

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll `predicate` until it is true (True) or `timeout` seconds pass (False). Blocks the caller."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    async def async_wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """`wait_until` for a coroutine: yields to its loop while polling."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)

    # ------------------------------------------------------------------ calendar and clock

    @staticmethod
    def _at(day: date, clock: dtime | str) -> datetime:
        t = clock if isinstance(clock, dtime) else dtime.fromisoformat(clock)
        return datetime.combine(day, t, ET).astimezone(UTC)

    def _session(self, day: date) -> tuple[datetime, datetime] | None:
        if day in self._session_cache:
            return self._session_cache[day]
        session: tuple[datetime, datetime] | None
        if self._cal_range is not None and self._cal_range[0] <= day <= self._cal_range[1]:
            session = self._calendar.get(day)
        elif day.weekday() >= 5:
            session = None
        else:
            session = self._at(day, dtime(9, 30)), self._at(day, dtime(16, 0))
        self._session_cache[day] = session
        return session

    def _in_session(self, t: datetime) -> bool:
        if self._crypto:
            return True
        session = self._session(t.astimezone(ET).date())
        return session is not None and session[0] <= t < session[1]

    def _session_from(self, t: datetime, *, opening_after: bool) -> tuple[datetime, datetime] | None:
        """The first session opening after `t` (opening_after) or still open/ahead at `t` (close > t)."""
        day = t.astimezone(ET).date()
        for _ in range(800):
            session = self._session(day)
            if session is not None and (session[0] > t if opening_after else session[1] > t):
                return session
            day += timedelta(days=1)
        return None

    def _advance(self, new_now: datetime) -> None:
        """Move the clock (lock held): open accepted stock orders at the bell, expire DAY orders at close."""
        old = self._now
        self._now = new_now
        if new_now <= old:
            return
        if self._crypto:
            if old.date() != new_now.date():
                self._last_equity = self._equity()
        else:
            session = self._session_from(old, opening_after=False)
            if session is not None and old < session[1] <= new_now:
                self._last_equity = self._equity()
        for order in list(self._working.values()):
            if order.status == "accepted" and not self._crypto:
                bell = self._session_from(max(old, order.created_at), opening_after=True)
                if (
                    bell is not None
                    and bell[0] <= new_now
                    and (order.expires_at is None or bell[0] < order.expires_at)
                ):
                    self._set_status(order, "new", bell[0])
                    self._push_trade_update("new", order, bell[0])
            if order.status in _WORKING and order.expires_at is not None and order.expires_at <= new_now:
                self._set_status(order, "expired", order.expires_at)
                order.expired_at = order.expires_at
                self._push_trade_update("expired", order, order.expires_at)

    # ------------------------------------------------------------------ assets and prices

    def _canon(self, symbol: str) -> str:
        """The venue's spelling: crypto pairs with a slash ("BTCUSD" -> "BTC/USD")."""
        sym = symbol.strip().upper()
        if self._crypto and "/" not in sym:
            for quote in ("USDT", "USDC", "USD", "BTC"):
                if sym.endswith(quote) and len(sym) > len(quote):
                    return f"{sym[: -len(quote)]}/{quote}"
        return sym

    def _ensure_asset(self, symbol: str) -> str:
        sym = self._canon(symbol)
        if sym not in self._assets:
            asset_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"fake-alpaca/asset/{sym}"))
            if self._crypto:
                base = sym.split("/")[0]
                asset: dict[str, Any] = {
                    "id": asset_id,
                    "class": "crypto",
                    "exchange": "CRYPTO",
                    "symbol": sym,
                    "name": f"{base} / US Dollar",
                    "status": "active",
                    "tradable": True,
                    "marginable": False,
                    "maintenance_margin_requirement": 100,
                    "margin_requirement_long": "100",
                    "margin_requirement_short": "100",
                    "shortable": False,
                    "easy_to_borrow": False,
                    "fractionable": True,
                    "attributes": [],
                    "min_order_size": "0.000001",
                    "min_trade_increment": "0.000000001",
                    "price_increment": "0.01",
                }
            else:
                asset = {
                    "id": asset_id,
                    "class": "us_equity",
                    "exchange": "NASDAQ",
                    "symbol": sym,
                    "name": f"{sym} Common Stock",
                    "status": "active",
                    "tradable": True,
                    "marginable": True,
                    "maintenance_margin_requirement": 30,
                    "margin_requirement_long": "30",
                    "margin_requirement_short": "30",
                    "shortable": True,
                    "easy_to_borrow": True,
                    "fractionable": True,
                    "attributes": ["fractional_eh_enabled"],
                }
            for name, value in self._asset_overrides.get(sym, {}).items():
                asset[name] = _num(value) if isinstance(value, Decimal) else value
            self._assets[sym] = asset
        return sym

    def _find_asset(self, symbol: str) -> dict[str, Any] | None:
        return self._assets.get(self._canon(symbol))

    def _store(self, sym: str, bar: MinuteBar) -> None:
        t = bar.t.astimezone(UTC)
        per_symbol = self._bars.setdefault(sym, {})
        times = self._bar_times.setdefault(sym, [])
        if t not in per_symbol:
            if not times or times[-1] < t:
                times.append(t)
            else:
                bisect.insort(times, t)
        per_symbol[t] = bar

    def _visible_times(self, sym: str) -> list[datetime]:
        """Stored minutes of `sym` that have ended on the venue clock."""
        times = self._bar_times.get(sym, [])
        return times[: bisect.bisect_right(times, self._now - ONE_MINUTE)]

    def _last_price(self, sym: str, before: datetime | None = None) -> Decimal | None:
        """Close of the last ended minute (optionally of one starting before `before`)."""
        times = self._visible_times(sym)
        if before is not None:
            times = times[: bisect.bisect_left(times, before)]
        if not times:
            return None
        return _dec(self._bars[sym][times[-1]].c)

    def _day_start(self, t: datetime) -> datetime:
        if self._crypto:
            return datetime.combine(t.astimezone(UTC).date(), dtime(0), UTC)
        return datetime.combine(t.astimezone(ET).date(), dtime(0), ET).astimezone(UTC)

    # ------------------------------------------------------------------ account arithmetic

    def _market_values(self) -> tuple[Decimal, Decimal]:
        long_mv = short_mv = Decimal(0)
        for sym, pos in self._positions.items():
            price = self._last_price(sym) or pos.avg_entry_price
            value = pos.qty * price
            if value >= 0:
                long_mv += value
            else:
                short_mv += value
        return long_mv, short_mv

    def _equity(self) -> Decimal:
        long_mv, short_mv = self._market_values()
        return self._cash + long_mv + short_mv

    def _reserved(self) -> Decimal:
        """Buying power held by working orders: buys, and sells beyond the long position (shorts)."""
        total = Decimal(0)
        for order in self._working.values():
            leaves = order.qty - order.filled_qty
            price = self._last_price(order.symbol) or Decimal(0)
            if order.side == "buy":
                total += leaves * price
            else:
                pos = self._positions.get(order.symbol)
                held = max(pos.qty, Decimal(0)) if pos is not None else Decimal(0)
                total += max(leaves - held, Decimal(0)) * price
        return total

    def _buying_power(self) -> Decimal:
        long_mv, short_mv = self._market_values()
        equity = self._cash + long_mv + short_mv
        # Reg T at 1x: every position ties up 100 % of its value.
        return max(equity - long_mv + short_mv - self._reserved(), Decimal(0))

    def _account_json(self) -> dict[str, Any]:
        long_mv, short_mv = self._market_values()
        equity = self._cash + long_mv + short_mv
        buying_power = _num(self._buying_power())
        initial_margin = long_mv - short_mv
        maintenance = initial_margin if self._crypto else (long_mv - short_mv) * Decimal("0.3")
        return {
            "id": self._account_id,
            "admin_configurations": {},
            "user_configurations": None,
            "account_number": "PA" + uuid.UUID(self._account_id).hex[:10].upper(),
            "status": "ACTIVE",
            "crypto_status": "ACTIVE",
            "options_approved_level": 0,
            "options_trading_level": 0,
            "currency": "USD",
            "buying_power": buying_power,
            "regt_buying_power": buying_power,
            "effective_buying_power": buying_power,
            "non_marginable_buying_power": buying_power,
            "options_buying_power": buying_power,
            "bod_dtbp": "0",
            "cash": _num(self._cash),
            "accrued_fees": "0",
            "portfolio_value": _num(equity),
            "trading_blocked": False,
            "transfers_blocked": False,
            "account_blocked": False,
            "created_at": _iso(self._created),
            "trade_suspended_by_user": False,
            "multiplier": "1",
            "shorting_enabled": not self._crypto,
            "equity": _num(equity),
            "last_equity": _num(self._last_equity),
            "long_market_value": _num(long_mv),
            "short_market_value": _num(short_mv),
            "position_market_value": _num(long_mv - short_mv),
            "initial_margin": _num(initial_margin),
            "maintenance_margin": _num(maintenance),
            "last_maintenance_margin": _num(maintenance),
            "sma": "0",
            "balance_asof": self._now.astimezone(ET).date().isoformat(),
            "crypto_tier": 1,
            "intraday_adjustments": "0",
            "pending_reg_taf_fees": "0",
        }

    def _position_json(self, sym: str, pos: _Position) -> dict[str, Any]:
        asset = self._assets[sym]
        price = self._last_price(sym) or pos.avg_entry_price
        day_start = self._day_start(self._now)
        lastday = self._last_price(sym, before=day_start) or price
        market_value = pos.qty * price
        cost_basis = pos.qty * pos.avg_entry_price
        pl = market_value - cost_basis
        plpc = pl / abs(cost_basis) if cost_basis else Decimal(0)
        intraday_pl = (price - lastday) * pos.qty
        intraday_base = abs(lastday * pos.qty)
        held = sum(
            (
                o.qty - o.filled_qty
                for o in self._working.values()
                if o.symbol == sym and o.side == ("sell" if pos.qty > 0 else "buy")
            ),
            Decimal(0),
        )
        available = pos.qty - held if pos.qty > 0 else pos.qty + held
        return {
            "asset_id": asset["id"],
            "symbol": sym.replace("/", ""),
            "exchange": asset["exchange"],
            "asset_class": asset["class"],
            "asset_marginable": asset["marginable"],
            "qty": _num(pos.qty),
            "avg_entry_price": _num(pos.avg_entry_price),
            "side": "long" if pos.qty > 0 else "short",
            "market_value": _num(market_value),
            "cost_basis": _num(cost_basis),
            "unrealized_pl": _num(pl),
            "unrealized_plpc": _num(plpc),
            "unrealized_intraday_pl": _num(intraday_pl),
            "unrealized_intraday_plpc": _num(intraday_pl / intraday_base if intraday_base else Decimal(0)),
            "current_price": _num(price),
            "lastday_price": _num(lastday),
            "change_today": _num((price - lastday) / lastday if lastday else Decimal(0)),
            "qty_available": _num(available),
        }

    # ------------------------------------------------------------------ orders

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _set_status(self, order: _Order, status: str, at: datetime) -> None:
        order.status = status
        order.updated_at = at
        if status in _WORKING:
            self._working[order.id] = order
        else:
            self._working.pop(order.id, None)

    def _submit(self, body: Any) -> tuple[_Order, str | None]:
        """Validate and create an order (lock held); returns it and a pending rejection reason."""
        if not isinstance(body, dict):
            raise _ApiError(400, 40010000, "request body format is invalid")
        cid = body.get("client_order_id")
        if cid is not None and not isinstance(cid, str):
            raise _ApiError(400, 40010000, "request body format is invalid")
        if cid and len(cid) > 128:
            raise _ApiError(422, 40010001, "client_order_id must be no more than 128 characters")
        if cid and cid in self._by_cid:
            raise _ApiError(422, 40010001, "client_order_id must be unique")
        raw_symbol = body.get("symbol")
        if not isinstance(raw_symbol, str) or not raw_symbol:
            raise _ApiError(422, 40010001, "symbol is required")
        asset = self._find_asset(raw_symbol)
        if asset is None:
            raise _ApiError(422, 40010001, f'asset "{raw_symbol}" not found')
        sym = asset["symbol"]
        if not asset["tradable"]:
            raise _ApiError(422, 40010001, f"{sym} is not tradable")
        side = body.get("side")
        if side not in ("buy", "sell"):
            raise _ApiError(422, 40010001, "side must be buy or sell")
        order_type = body.get("type", body.get("order_type"))
        if order_type != "market":
            # The fake's matching engine only works market orders.
            raise _ApiError(422, 40010001, f"order type {order_type!r} is not supported by the fake")
        if body.get("order_class") not in (None, "", "simple"):
            raise _ApiError(422, 40010001, "only simple orders are supported by the fake")
        tif = body.get("time_in_force")
        if tif not in ("day", "gtc", "opg", "cls", "ioc", "fok"):
            raise _ApiError(422, 40010001, "invalid time_in_force")
        if body.get("notional") is not None:
            raise _ApiError(422, 40010001, "notional orders are not supported by the fake")
        if body.get("qty") is None:
            raise _ApiError(422, 40010001, "qty or notional is required")
        try:
            qty = _dec(body["qty"])
        except (InvalidOperation, ValueError, TypeError):
            raise _ApiError(422, 40010001, "invalid qty") from None
        if not qty.is_finite() or qty <= 0:
            raise _ApiError(422, 40010001, "qty must be > 0")
        fractional = qty != qty.to_integral_value()
        if self._crypto:
            if tif not in ("gtc", "ioc"):
                raise _ApiError(422, 42210000, "invalid crypto time_in_force")
            min_size = _dec(asset.get("min_order_size") or 0)
            if qty < min_size:
                raise _ApiError(422, 40010001, f"qty must be >= {_num(min_size)}")
            increment = _dec(asset.get("min_trade_increment") or "0.000000001")
            if increment and qty % increment != 0:
                raise _ApiError(422, 40010001, f"qty must be a multiple of {_num(increment)}")
        else:
            increment = Decimal(1)
            if fractional:
                if not asset["fractionable"]:
                    raise _ApiError(422, 40010001, "requested asset is not fractionable")
                if tif != "day":
                    raise _ApiError(422, 42210000, "fractional orders must be DAY orders")
                increment = Decimal("0.000000001")
        position = self._positions.get(sym)
        held = position.qty if position is not None else Decimal(0)
        price = self._last_price(sym) or Decimal(0)
        if side == "buy":
            cost = qty * price
            buying_power = self._buying_power()
            if cost > buying_power:
                if self._crypto:
                    message = (
                        f"insufficient balance for USD (requested: {_num(cost)}, "
                        f"available: {_num(buying_power)})"
                    )
                    raise _ApiError(
                        403,
                        40310000,
                        message,
                        available=_num(buying_power),
                        balance=_num(self._cash),
                        symbol="USD",
                    )
                raise _ApiError(
                    403,
                    40310000,
                    "insufficient buying power",
                    buying_power=_num(buying_power),
                    cost_basis=_num(cost),
                )
            intent = "buy_to_close" if held < 0 else "buy_to_open"
        else:
            pending_sells = sum(
                (
                    o.qty - o.filled_qty
                    for o in self._working.values()
                    if o.symbol == sym and o.side == "sell"
                ),
                Decimal(0),
            )
            available = max(held - pending_sells, Decimal(0))
            if self._crypto and qty > available:
                base = sym.split("/")[0]
                raise _ApiError(
                    403,
                    40310000,
                    f"insufficient balance for {base} (requested: {_num(qty)}, available: {_num(available)})",
                    available=_num(available),
                    balance=_num(max(held, Decimal(0))),
                    symbol=base,
                )
            if held > 0 and qty > available:
                # Alpaca will not flip a long into a short in one order.
                raise _ApiError(
                    403,
                    40310000,
                    f"insufficient qty available for order (requested: {_num(qty)}, "
                    f"available: {_num(available)})",
                    available=_num(available),
                    existing_qty=_num(held),
                    held_for_orders=_num(pending_sells),
                    symbol=sym,
                )
            if held <= 0:
                if not asset["shortable"]:
                    raise _ApiError(403, 40310000, f"asset {sym} cannot be sold short")
                if qty * price > self._buying_power():
                    raise _ApiError(
                        403,
                        40310000,
                        "insufficient buying power",
                        buying_power=_num(self._buying_power()),
                        cost_basis=_num(qty * price),
                    )
            intent = "sell_to_close" if held > 0 else "sell_to_open"
        intent = body.get("position_intent") or intent
        now = self._now
        expires_at: datetime | None
        if self._crypto or tif == "gtc":
            expires_at = now + timedelta(days=90)
        else:
            session = self._session_from(now, opening_after=False)
            expires_at = session[1] if session is not None else None
        self._seq += 1
        order = _Order(
            id=self._uuid(),
            client_order_id=cid or self._uuid(),
            symbol=sym,
            asset_id=asset["id"],
            asset_class=asset["class"],
            side=side,
            qty=qty,
            time_in_force=tif,
            extended_hours=bool(body.get("extended_hours", False)),
            position_intent=intent,
            created_at=now,
            expires_at=expires_at,
            fractions=self._partial_fills,
            increment=increment,
            seq=self._seq,
        )
        self._orders[order.id] = order
        self._by_cid[order.client_order_id] = order
        self._working[order.id] = order
        reason, self._reject_next = self._reject_next, None
        return order, reason

    def _after_submit(self, order: _Order, reason: str | None) -> None:
        """What the venue does right after answering the POST: reject, or open the order if it can."""
        now = self._now
        if reason is not None:
            self._set_status(order, "rejected", now)
            order.failed_at = now
            self._reject_reasons[order.client_order_id] = reason
            self._push_trade_update("rejected", order, now)
            return
        if self._crypto or self._in_session(now):
            self._set_status(order, "new", now)
            self._push_trade_update("new", order, now)

    def _fill_at(self, sym: str, bar: MinuteBar) -> None:
        """Execute working orders of `sym` at the open of this minute (lock held)."""
        t = bar.t.astimezone(UTC)
        if not self._in_session(t):
            return
        price = _dec(bar.o)
        for order in list(self._working.values()):
            if order.symbol != sym:
                continue
            accepted_minute = order.created_at.replace(second=0, microsecond=0)
            if t < accepted_minute or (order.last_exec_t is not None and t <= order.last_exec_t):
                continue
            if order.expires_at is not None and t >= order.expires_at:
                continue
            if order.status == "accepted":
                self._set_status(order, "new", t)
                self._push_trade_update("new", order, t)
            self._execute(order, t, price)

    def _execute(self, order: _Order, t: datetime, price: Decimal) -> None:
        leaves = order.qty - order.filled_qty
        index = order.executions
        if index >= len(order.fractions) - 1 or order.time_in_force == "fok":
            qty = leaves
        else:
            qty = (order.qty * order.fractions[index]).quantize(order.increment, rounding=ROUND_DOWN)
            qty = min(qty, leaves)
        order.executions += 1
        order.last_exec_t = t
        if qty <= 0:
            return
        signed = qty if order.side == "buy" else -qty
        self._cash -= signed * price
        pos = self._positions.get(order.symbol)
        if pos is None:
            self._positions[order.symbol] = _Position(signed, price)
        else:
            new_qty = pos.qty + signed
            if new_qty == 0:
                del self._positions[order.symbol]
            elif pos.qty == 0 or (pos.qty > 0) == (signed > 0):
                pos.avg_entry_price = (pos.qty * pos.avg_entry_price + signed * price) / new_qty
                pos.qty = new_qty
            elif (pos.qty > 0) != (new_qty > 0):
                # Crossed through zero: what is left was opened at this price.
                pos.qty, pos.avg_entry_price = new_qty, price
            else:
                pos.qty = new_qty
        order.filled_qty += qty
        order.filled_value += qty * price
        done = order.filled_qty >= order.qty
        self._set_status(order, "filled" if done else "partially_filled", t)
        if done:
            order.filled_at = t
        position_qty = self._positions[order.symbol].qty if order.symbol in self._positions else Decimal(0)
        execution_id = self._uuid()
        stamp = t.astimezone(ET)
        execution = Execution(
            id=f"{stamp:%Y%m%d%H%M%S}{stamp.microsecond // 1000:03d}::{execution_id}",
            execution_id=execution_id,
            order_id=order.id,
            client_order_id=order.client_order_id,
            symbol=order.symbol,
            side=order.side,
            qty=qty,
            price=price,
            timestamp=t,
            cum_qty=order.filled_qty,
            leaves_qty=order.qty - order.filled_qty,
            order_status=order.status,
            position_qty=position_qty,
        )
        self._executions.append(execution)
        self._push_trade_update("fill" if done else "partial_fill", order, t, execution)
        if not done and order.time_in_force == "ioc":
            # Immediate-or-cancel: what the first execution left is canceled at once.
            self._set_status(order, "canceled", t)
            order.canceled_at = t
            self._push_trade_update("canceled", order, t)

    def _cancel(self, order: _Order) -> None:
        if order.status not in _OPEN_STATUSES:
            raise _ApiError(422, 42210000, f'order is already in "{order.status}" state')
        now = self._now
        self._set_status(order, "canceled", now)
        order.canceled_at = now
        self._push_trade_update("canceled", order, now)

    def _activity_json(self, ex: Execution) -> dict[str, Any]:
        return {
            "id": ex.id,
            "activity_type": "FILL",
            "transaction_time": _iso(ex.timestamp),
            "type": "fill" if ex.leaves_qty == 0 else "partial_fill",
            "price": _num(ex.price),
            "qty": _num(ex.qty),
            "side": ex.side,
            "symbol": ex.symbol,
            "leaves_qty": _num(ex.leaves_qty),
            "order_id": ex.order_id,
            "cum_qty": _num(ex.cum_qty),
            "order_status": "filled" if ex.leaves_qty == 0 else "partially_filled",
        }

    # ------------------------------------------------------------------ REST

    def _handle_http(self, method: str, raw_path: str, headers: Any, body: bytes) -> _Reply:
        """Answer one HTTP request (called on a server thread)."""
        parts = urlsplit(raw_path)
        path = parts.path
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        is_submit = method == "POST" and path == "/v2/orders"
        with self._lock:
            self._requests.append((method, path, query))
            if is_submit:
                try:
                    self._order_posts.append(json.loads(body or b"null"))
                except ValueError:
                    self._order_posts.append(body.decode(errors="replace"))
            if self._respond_429 > 0:
                self._respond_429 -= 1
                return _Reply(429, _json_bytes({"code": 42910000, "message": "rate limit exceeded"}))
            key, secret = headers.get("APCA-API-KEY-ID"), headers.get("APCA-API-SECRET-KEY")
            if key != self.key or secret != self.secret:
                return _Reply(401, _json_bytes({"code": 40110000, "message": "request is not authorized"}))
            try:
                if is_submit:
                    return self._post_order(body)
                result = self._route(method, path, query)
            except _ApiError as err:
                return _Reply(err.status, _json_bytes(err.body))
            except Exception:
                self._server_errors.append(traceback.format_exc())
                return self._fault_reply(500)
        if result is None:
            return _Reply(204)
        if isinstance(result, _Reply):
            return result
        return _Reply(200, _json_bytes(result))

    def _post_order(self, body: bytes) -> _Reply:
        fail, self._fail_next = self._fail_next, None
        delay, self._delay_next = self._delay_next, 0.0
        if fail is not None and not fail[1]:
            return self._fault_reply(fail[0])
        try:
            parsed = json.loads(body or b"null")
        except ValueError:
            parsed = None
        try:
            order, reason = self._submit(parsed)
        except _ApiError as err:
            if fail is not None:
                return self._fault_reply(fail[0])
            return _Reply(err.status, _json_bytes(err.body), delay=delay)
        reply = _Reply(200, _json_bytes(order.to_json()), delay=delay)
        self._after_submit(order, reason)
        if fail is not None:
            return self._fault_reply(fail[0])
        return reply

    @staticmethod
    def _fault_reply(status: int) -> _Reply:
        if status in _NGINX_HTML:
            return _Reply(status, _nginx_page(_NGINX_HTML[status]), content_type="text/html")
        code, message = _JSON_5XX.get(status, (status * 100000, "error"))
        return _Reply(status, _json_bytes({"code": code, "message": message}))

    def _route(self, method: str, path: str, query: dict[str, str]) -> Any:
        """Dispatch one authenticated request (lock held); a returned None means 204."""
        if method == "GET":
            if path in ("/v2/stocks/bars", "/v1beta3/crypto/us/bars"):
                return self._bars_reply(query, stocks=path.startswith("/v2/"))
            if path in ("/v2/stocks/bars/latest", "/v1beta3/crypto/us/latest/bars"):
                return self._latest_bars(query, stocks=path.startswith("/v2/"))
            if path == "/v2/account":
                return self._account_json()
            if path == "/v2/clock":
                return self._clock_json()
            if path == "/v2/calendar":
                return self._calendar_json(query)
            if path == "/v2/assets":
                return self._assets_json(query)
            if path.startswith("/v2/assets/"):
                ident = unquote(path[len("/v2/assets/") :])
                asset = self._find_asset(ident) or next(
                    (a for a in self._assets.values() if a["id"] == ident), None
                )
                if asset is None:
                    raise _ApiError(404, 40410000, f"asset not found for {ident}")
                return asset
            if path == "/v2/orders":
                return self._orders_json(query)
            if path == "/v2/orders:by_client_order_id":
                order = self._by_cid.get(query.get("client_order_id", ""))
                if order is None:
                    raise _ApiError(404, 40410000, "order not found")
                return order.to_json()
            if path.startswith("/v2/orders/"):
                return self._order_by_id(path[len("/v2/orders/") :]).to_json()
            if path == "/v2/positions":
                return [self._position_json(s, p) for s, p in sorted(self._positions.items())]
            if path.startswith("/v2/positions/"):
                sym = self._canon(unquote(path[len("/v2/positions/") :]))
                pos = self._positions.get(sym)
                if pos is None:
                    raise _ApiError(404, 40410000, "position does not exist")
                return self._position_json(sym, pos)
            if path == "/v2/account/activities":
                types = query.get("activity_types") or query.get("activity_type") or "FILL"
                wanted = {t.strip().upper() for t in types.split(",")}
                return self._activities_json(query) if "FILL" in wanted else []
            if path.startswith("/v2/account/activities/"):
                kind = path[len("/v2/account/activities/") :].upper()
                return self._activities_json(query) if kind == "FILL" else []
        elif method == "DELETE":
            if path == "/v2/orders":
                return _Reply(207, _json_bytes(self._cancel_all()))
            if path.startswith("/v2/orders/"):
                self._cancel(self._order_by_id(path[len("/v2/orders/") :]))
                return None
            if path == "/v2/positions":
                return _Reply(207, _json_bytes(self._close_all_positions()))
            if path.startswith("/v2/positions/"):
                return self._close_position(unquote(path[len("/v2/positions/") :]), query)
        return _Reply(404, b"404 page not found", content_type="text/plain; charset=utf-8")

    def _order_by_id(self, ident: str) -> _Order:
        try:
            uuid.UUID(ident)
        except ValueError:
            raise _ApiError(422, 40010001, "order_id is missing") from None
        order = self._orders.get(ident)
        if order is None:
            raise _ApiError(404, 40410000, "order not found")
        return order

    def _cancel_all(self) -> list[dict[str, Any]]:
        out = []
        for order in list(self._working.values()):
            if order.status in _OPEN_STATUSES:
                self._cancel(order)
                out.append({"id": order.id, "status": 200, "body": order.to_json()})
        return out

    def _close_position(self, symbol: str, query: dict[str, str]) -> dict[str, Any]:
        sym = self._canon(symbol)
        pos = self._positions.get(sym)
        if pos is None:
            raise _ApiError(404, 40410000, "position does not exist")
        qty = abs(pos.qty)
        if query.get("qty"):
            qty = _dec(query["qty"])
        elif query.get("percentage"):
            qty = (qty * _dec(query["percentage"]) / 100).quantize(
                Decimal("0.000000001"), rounding=ROUND_DOWN
            )
        body = {
            "symbol": sym,
            "qty": str(qty),
            "side": "sell" if pos.qty > 0 else "buy",
            "type": "market",
            "time_in_force": "gtc" if self._crypto else "day",
        }
        order, reason = self._submit(body)
        self._after_submit(order, reason)
        return order.to_json()

    def _close_all_positions(self) -> list[dict[str, Any]]:
        out = []
        for sym in list(self._positions):
            try:
                body: dict[str, Any] = self._close_position(sym, {})
                status = 200
            except _ApiError as err:
                body, status = err.body, err.status
            out.append({"symbol": sym.replace("/", ""), "status": status, "body": body})
        return out

    def _clock_json(self) -> dict[str, Any]:
        now = self._now
        if self._crypto:
            # Alpaca's clock is the equity clock; the brief asks a crypto fake to report a market that never
            # closes, so next_close is the next UTC midnight and next_open is now.
            return {
                "timestamp": now.astimezone(ET).isoformat(),
                "is_open": True,
                "next_open": now.astimezone(ET).isoformat(),
                "next_close": (self._day_start(now) + timedelta(days=1)).astimezone(ET).isoformat(),
            }
        nxt = self._session_from(now, opening_after=True)
        current = self._session_from(now, opening_after=False)
        is_open = self._in_session(now)
        far = now + timedelta(days=3650)
        next_open = nxt[0] if nxt else far
        next_close = current[1] if current else far
        return {
            "timestamp": now.astimezone(ET).isoformat(),
            "is_open": is_open,
            "next_open": next_open.astimezone(ET).isoformat(),
            "next_close": next_close.astimezone(ET).isoformat(),
        }

    def _calendar_json(self, query: dict[str, str]) -> list[dict[str, str]]:
        try:
            start = date.fromisoformat(query["start"][:10]) if query.get("start") else date(1970, 1, 1)
            end = date.fromisoformat(query["end"][:10]) if query.get("end") else date(2029, 12, 31)
        except ValueError:
            raise _ApiError(400, 40010000, "invalid date format") from None
        out = []
        day = start
        while day <= end:
            session = self._session(day)
            if session is not None:
                settle = self._session_from(session[1], opening_after=True)
                out.append(
                    {
                        "date": day.isoformat(),
                        "open": session[0].astimezone(ET).strftime("%H:%M"),
                        "close": session[1].astimezone(ET).strftime("%H:%M"),
                        "session_open": "0400",
                        "session_close": "2000",
                        "settlement_date": (settle[0].astimezone(ET).date() if settle else day).isoformat(),
                    }
                )
            day += timedelta(days=1)
        return out

    def _assets_json(self, query: dict[str, str]) -> list[dict[str, Any]]:
        status = query.get("status")
        asset_class = query.get("asset_class")
        out = []
        for asset in self._assets.values():
            if status and asset["status"] != status:
                continue
            if asset_class and asset["class"] != asset_class:
                continue
            if query.get("exchange") and asset["exchange"] != query["exchange"]:
                continue
            out.append(asset)
        return out

    def _orders_json(self, query: dict[str, str]) -> list[dict[str, Any]]:
        status = query.get("status", "open")
        if status not in ("open", "closed", "all"):
            raise _ApiError(422, 40010001, "invalid status")
        try:
            limit = min(max(int(query.get("limit") or 50), 1), 500)
            after = _parse_time(query["after"]) if query.get("after") else None
            until = _parse_time(query["until"]) if query.get("until") else None
        except ValueError:
            raise _ApiError(422, 40010001, "invalid query parameter") from None
        symbols = {self._canon(s) for s in query.get("symbols", "").split(",") if s}
        side = query.get("side")
        selected = []
        for order in self._orders.values():
            is_open = order.status in _OPEN_STATUSES
            if (status == "open" and not is_open) or (status == "closed" and is_open):
                continue
            if after is not None and order.created_at <= after:
                continue
            if until is not None and order.created_at >= until:
                continue
            if symbols and order.symbol not in symbols:
                continue
            if side and order.side != side:
                continue
            selected.append(order)
        selected.sort(key=lambda o: (o.created_at, o.seq), reverse=query.get("direction", "desc") != "asc")
        return [o.to_json() for o in selected[:limit]]

    def _activities_json(self, query: dict[str, str]) -> list[dict[str, Any]]:
        try:
            after = _parse_time(query["after"]) if query.get("after") else None
            until = _parse_time(query["until"], end_of_day=True) if query.get("until") else None
            on_day = date.fromisoformat(query["date"][:10]) if query.get("date") else None
            page_size = min(max(int(query.get("page_size") or 100), 1), 100)
        except ValueError:
            raise _ApiError(422, 40010001, "invalid query parameter") from None
        items = [
            ex
            for ex in self._executions
            if (after is None or ex.timestamp > after)
            and (until is None or ex.timestamp < until)
            and (on_day is None or ex.timestamp.astimezone(ET).date() == on_day)
        ]
        if query.get("direction", "desc") != "asc":
            items.reverse()
        token = query.get("page_token")
        if token:
            ids = [ex.id for ex in items]
            if token in ids:
                items = items[ids.index(token) + 1 :]
        return [self._activity_json(ex) for ex in items[:page_size]]

    # ------------------------------------------------------------------ market data REST

    def _parse_timeframe(self, text: str) -> tuple[int, str]:
        match = _TIMEFRAME_RE.match(text)
        if match is None:
            raise _ApiError(400, 40010001, f"invalid timeframe: {text}")
        amount, unit = int(match.group(1)), _UNIT[match.group(2)]
        bounds = {"Min": 59, "Hour": 23, "Day": 1, "Week": 1, "Month": 12}
        if not 1 <= amount <= bounds[unit] or (unit == "Month" and amount not in (1, 2, 3, 4, 6, 12)):
            raise _ApiError(400, 40010001, f"invalid timeframe: {text}")
        return amount, unit

    @staticmethod
    def _bucket(t: datetime, amount: int, unit: str, tz: tzinfo) -> datetime:
        local = t.astimezone(tz)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        if unit == "Min":
            minutes = local.hour * 60 + local.minute
            start = midnight + timedelta(minutes=minutes - minutes % amount)
        elif unit == "Hour":
            start = midnight + timedelta(hours=local.hour - local.hour % amount)
        elif unit == "Day":
            start = midnight
        elif unit == "Week":
            start = midnight - timedelta(days=local.weekday())
        else:
            month = (local.month - 1) // amount * amount + 1
            start = midnight.replace(month=month, day=1)
        # Re-attach the zone so a DST change inside the bucket is resolved at the bucket's own start.
        return datetime.combine(start.date(), start.time(), tz).astimezone(UTC)

    def _aggregate(
        self, sym: str, *, amount: int, unit: str, stocks: bool, start: datetime, end: datetime
    ) -> list[dict[str, Any]]:
        """Bars of `sym` labelled by their start in [start, end], built from ended minutes."""
        minute_bars = [self._bars[sym][t] for t in self._visible_times(sym)]
        integral = not self._crypto
        if unit == "Min" and amount == 1:
            return [_bar_json(b, integral) for b in minute_bars if start <= b.t <= end]
        tz: tzinfo = ET if stocks else UTC
        groups: dict[datetime, list[MinuteBar]] = {}
        for bar in minute_bars:
            if stocks and not self._in_session(bar.t.astimezone(UTC)):
                continue
            label = self._bucket(bar.t, amount, unit, tz)
            if start <= label <= end:
                groups.setdefault(label, []).append(bar)
        return [_bar_json(_combine(label, groups[label]), integral) for label in sorted(groups)]

    def _bars_reply(self, query: dict[str, str], stocks: bool) -> dict[str, Any]:
        symbols = sorted({self._canon(s) for s in query.get("symbols", "").split(",") if s.strip()})
        if not symbols:
            raise _ApiError(400, 40010001, "missing symbols")
        amount, unit = self._parse_timeframe(query.get("timeframe") or "1Min")
        try:
            start = _parse_time(query["start"]) if query.get("start") else self._day_start(self._now)
            end = _parse_time(query["end"], end_of_day=True) if query.get("end") else self._now
            limit = int(query.get("limit") or 1000)
        except ValueError:
            raise _ApiError(400, 40010001, "invalid query parameter") from None
        if not 1 <= limit <= 10000:
            raise _ApiError(400, 40010001, "invalid limit: must be between 1 and 10000")
        descending = query.get("sort", "asc") == "desc"
        items: list[tuple[str, dict[str, Any]]] = []
        for sym in symbols:
            bars = (
                self._aggregate(sym, amount=amount, unit=unit, stocks=stocks, start=start, end=end)
                if sym in self._bars
                else []
            )
            if descending:
                bars.reverse()
            items.extend((sym, bar) for bar in bars)
        offset = 0
        token = query.get("page_token")
        if token:
            keys = [f"{sym}|{_iso(bar['t'])}" for sym, bar in items]
            try:
                wanted = base64.b64decode(token.encode()).decode()
            except ValueError:
                raise _ApiError(400, 40010001, "invalid page token") from None
            if wanted not in keys:
                raise _ApiError(400, 40010001, "invalid page token")
            offset = keys.index(wanted)
        page = items[offset : offset + limit]
        rest = items[offset + limit :]
        out: dict[str, list[dict[str, Any]]] = {}
        for sym, bar in page:
            out.setdefault(sym, []).append({**bar, "t": _iso(bar["t"])})
        next_token = None
        if rest:
            next_token = base64.b64encode(f"{rest[0][0]}|{_iso(rest[0][1]['t'])}".encode()).decode()
        reply: dict[str, Any] = {"bars": out, "next_page_token": next_token}
        if stocks:
            reply["currency"] = "USD"
        return reply

    def _latest_bars(self, query: dict[str, str], stocks: bool) -> dict[str, Any]:
        symbols = sorted({self._canon(s) for s in query.get("symbols", "").split(",") if s.strip()})
        out = {}
        for sym in symbols:
            times = self._visible_times(sym)
            if times:
                bar = _bar_json(self._bars[sym][times[-1]], not self._crypto)
                out[sym] = {**bar, "t": _iso(bar["t"])}
        return {"bars": out} if not stocks else {"bars": out, "currency": "USD"}

    # ------------------------------------------------------------------ websocket: producers (lock held)

    def _wants(self, channel: str, sym: str) -> bool:
        """Whether any data socket subscribes `channel` for `sym` (lock held): skips costly daily bars."""
        return any(self._subscribed(c, channel, sym) for c in self._data_clients)

    def _bar_msg(self, kind: str, sym: str, bar: MinuteBar) -> dict[str, Any]:
        return {"T": kind, "S": sym, **_bar_json(bar, not self._crypto)}

    def _daily_msg(self, sym: str, bar: MinuteBar) -> dict[str, Any] | None:
        """The day's running bar, as dailyBars subscribers get it after each minute of the session."""
        t = bar.t.astimezone(UTC)
        if not self._in_session(t):
            return None
        day_start = self._day_start(t)
        times = self._bar_times[sym]
        lo, hi = bisect.bisect_left(times, day_start), bisect.bisect_right(times, t)
        bars = [self._bars[sym][x] for x in times[lo:hi] if self._in_session(x)]
        return {"T": "d", "S": sym, **_bar_json(_combine(day_start, bars), not self._crypto)}

    def _schedule_data(self, msgs: list[dict[str, Any]]) -> None:
        loop = self._loop
        if msgs and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._fanout_data, msgs)

    def _push_trade_update(
        self, event: str, order: _Order, at: datetime, execution: Execution | None = None
    ) -> None:
        data: dict[str, Any] = {"event": event, "timestamp": _iso(at), "order": order.to_json()}
        if execution is not None:
            data.update(
                execution_id=execution.execution_id,
                price=_num(execution.price),
                qty=_num(execution.qty),
                position_qty=_num(execution.position_qty),
            )
        payload = _json_bytes({"stream": "trade_updates", "data": data})
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._fanout_trading, payload)

    def _run_on_loop(self, coro: Any) -> int:
        loop = self._loop
        if loop is None or not loop.is_running():
            coro.close()
            return 0
        return int(asyncio.run_coroutine_threadsafe(coro, loop).result(10))

    # ------------------------------------------------------------------ websocket: loop side

    def _fanout_data(self, msgs: list[dict[str, Any]]) -> None:
        for client in list(self._data_clients):
            mine = [m for m in msgs if self._subscribed(client, _BAR_CHANNEL.get(m["T"], ""), m["S"])]
            if mine:
                client.queue.put_nowait(self._encode_data(client, mine))

    def _fanout_trading(self, payload: bytes) -> None:
        for client in list(self._trading_clients):
            if client.listening:
                client.queue.put_nowait(payload)

    @staticmethod
    def _subscribed(client: _WsClient, channel: str, sym: str) -> bool:
        wanted = client.subs.get(channel, set())
        return sym in wanted or "*" in wanted

    @staticmethod
    def _encode_data(client: _WsClient, msgs: list[dict[str, Any]]) -> bytes | str:
        if client.use_msgpack:
            return bytes(msgpack.packb(msgs, datetime=True))
        rows = [{k: _iso(v) if isinstance(v, datetime) else v for k, v in m.items()} for m in msgs]
        return json.dumps(rows)

    async def _abort_clients(self, which: str) -> int:
        clients = self._data_clients if which == "data" else self._trading_clients
        with self._lock:
            victims = list(clients)
            clients.clear()
        for client in victims:
            client.ws.transport.abort()
        return len(victims)

    @staticmethod
    def _ws_process_request(connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/stream" or re.fullmatch(r"/v2/[a-z_]+|/v1beta3/crypto/[a-z]+", path):
            return None
        return connection.respond(404, "Not Found\n")

    async def _ws_handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        path = urlsplit(ws.request.path).path
        if path == "/stream":
            client = _WsClient(ws, "trading", use_msgpack=False)
        else:
            content_type = ws.request.headers.get("Content-Type", "")
            kind = "crypto" if path.startswith("/v1beta3/") else "stock"
            client = _WsClient(ws, kind, use_msgpack="msgpack" in content_type)
        writer = asyncio.create_task(self._writer(client))
        try:
            if client.kind == "trading":
                await self._trading_session(client)
            else:
                await self._data_session(client)
        except ConnectionClosed:
            pass
        except Exception:
            with self._lock:
                self._server_errors.append(traceback.format_exc())
        finally:
            with self._lock:
                self._data_clients.discard(client)
                self._trading_clients.discard(client)
                client.listening = False
            client.queue.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await asyncio.wait_for(writer, 2)

    async def _writer(self, client: _WsClient) -> None:
        """Send queued frames in order; a `None` ends the writer, `b""` closes the socket politely."""
        while True:
            item = await client.queue.get()
            if item is None:
                return
            if item == b"":
                await client.ws.close()
                return
            try:
                await client.ws.send(item)
            except ConnectionClosed:
                return

    def _send_control(self, client: _WsClient, msgs: list[dict[str, Any]]) -> None:
        client.queue.put_nowait(self._encode_data(client, msgs))

    @staticmethod
    def _decode(raw: bytes | str) -> Any:
        if isinstance(raw, bytes):
            try:
                return msgpack.unpackb(raw)
            except ValueError:
                return json.loads(raw)
        return json.loads(raw)

    async def _data_session(self, client: _WsClient) -> None:
        channels = _CRYPTO_CHANNELS if client.kind == "crypto" else _STOCK_CHANNELS
        self._send_control(client, [{"T": "success", "msg": "connected"}])
        try:
            first = await asyncio.wait_for(client.ws.recv(), 10)
        except TimeoutError:
            self._send_control(client, [{"T": "error", "code": 404, "msg": "auth timeout"}])
            client.queue.put_nowait(b"")
            return
        raw: bytes | str | None = first
        while True:
            if raw is None:
                raw = await client.ws.recv()
            try:
                msg = self._decode(raw)
            except ValueError:
                msg = None
            raw = None
            if not isinstance(msg, dict):
                self._send_control(client, [{"T": "error", "code": 400, "msg": "invalid syntax"}])
                continue
            action = msg.get("action")
            if action == "auth":
                if client.authenticated:
                    self._send_control(client, [{"T": "error", "code": 403, "msg": "already authenticated"}])
                    continue
                if msg.get("key") != self.key or msg.get("secret") != self.secret:
                    self._send_control(client, [{"T": "error", "code": 402, "msg": "auth failed"}])
                    client.queue.put_nowait(b"")
                    return
                if any(c.kind == client.kind for c in self._data_clients):
                    # Alpaca allows one market-data connection per key and feed.
                    with self._lock:
                        self._data_rejections += 1
                    self._send_control(
                        client, [{"T": "error", "code": 406, "msg": "connection limit exceeded"}]
                    )
                    client.queue.put_nowait(b"")
                    return
                client.authenticated = True
                with self._lock:
                    self._data_clients.add(client)
                    self._data_auths += 1
                self._send_control(client, [{"T": "success", "msg": "authenticated"}])
            elif action in ("subscribe", "unsubscribe"):
                if not client.authenticated:
                    self._send_control(client, [{"T": "error", "code": 401, "msg": "not authenticated"}])
                    continue
                for channel in channels:
                    symbols = msg.get(channel)
                    if not isinstance(symbols, list):
                        continue
                    names = {s if s == "*" else self._canon(s) for s in symbols if isinstance(s, str)}
                    targets = [channel]
                    if channel == "trades" and client.kind == "stock":
                        targets += ["corrections", "cancelErrors"]
                    with self._lock:  # data_subscribers() reads these from other threads
                        for target in targets:
                            current = client.subs.setdefault(target, set())
                            if action == "subscribe":
                                current |= names
                            else:
                                current -= names
                reply: dict[str, Any] = {"T": "subscription"}
                for channel in channels:
                    reply[channel] = sorted(client.subs.get(channel, set()))
                self._send_control(client, [reply])
            else:
                self._send_control(client, [{"T": "error", "code": 400, "msg": "invalid syntax"}])

    async def _trading_session(self, client: _WsClient) -> None:
        async for raw in client.ws:
            try:
                msg = json.loads(raw)
            except ValueError:
                msg = None
            if not isinstance(msg, dict):
                continue
            action = msg.get("action")
            raw_data = msg.get("data")
            data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
            if action in ("authenticate", "auth"):
                ok = data.get("key_id") == self.key and data.get("secret_key") == self.secret
                status = "authorized" if ok else "unauthorized"
                client.queue.put_nowait(
                    _json_bytes(
                        {"stream": "authorization", "data": {"status": status, "action": "authenticate"}}
                    )
                )
                if not ok:
                    client.queue.put_nowait(b"")
                    return
                client.authenticated = True
                with self._lock:
                    self._trading_clients.add(client)
                    self._trading_auths += 1
            elif action == "listen":
                if not client.authenticated:
                    client.queue.put_nowait(
                        _json_bytes(
                            {
                                "stream": "authorization",
                                "data": {"status": "unauthorized", "action": "listen"},
                            }
                        )
                    )
                    continue
                streams = data.get("streams")
                known = [s for s in streams if s == "trade_updates"] if isinstance(streams, list) else []
                with self._lock:
                    client.listening = bool(known)
                client.queue.put_nowait(_json_bytes({"stream": "listening", "data": {"streams": known}}))
