"""Load and validate config.toml. Every problem names its key; nothing starts on a bad config."""

from __future__ import annotations

import os
import tomllib
from datetime import datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, StrictBool, ValidationError, ValidationInfo, field_validator, model_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from bot.bars import BarGuardConfig, parse_timeframe, utc
from bot.brokers.registry import DEFAULT_KIND as DEFAULT_BROKER
from bot.brokers.registry import BrokerConfig
from bot.errors import ConfigError
from bot.feeds.base import FeedContext
from bot.feeds.registry import DEFAULT_KIND as DEFAULT_FEED
from bot.feeds.registry import FeedConfig
from bot.settings import Section, SymbolRules, resolve_path

DATABASE_URL_ENV = "PAPERBOT_DATABASE_URL"

Fraction = Annotated[float, Field(gt=0, le=1)]


class DaemonConfig(Section):
    """[daemon]: where the books live and how the process behaves."""

    database_url: str = "sqlite:///var/paperbot.sqlite"
    book: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = "paper"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_file: Path | None = None
    equity_snapshot_seconds: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: Annotated[int, Field(ge=1, le=256)] = 1
    # How long the engine waits, on the market clock, for the rest of an instant's bars after the first.
    batch_linger_seconds: Annotated[float, Field(ge=0, le=3600)] = 0.25
    # How long a temporary database fault (a lock, a dropped connection, a server restarting) may last
    # before the daemon stops with exit code 3; 0 gives up at the first one.
    database_retry_seconds: Annotated[float, Field(ge=0, le=86_400)] = 300.0
    # SQLite only: how long one try waits for another writer's lock before it counts as a fault.
    database_busy_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 5.0

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str, info: ValidationInfo) -> str:
        try:
            url = make_url(value)
        except ArgumentError:  # its message repeats the URL, which may hold a password: say less
            raise ValueError("cannot parse it as a SQLAlchemy URL (dialect+driver://user@host/db)") from None
        try:
            url.get_dialect().import_dbapi()
        except NoSuchModuleError:
            raise ValueError(
                f"SQLAlchemy has no dialect {url.drivername!r}: use sqlite:///PATH or"
                " postgresql+psycopg://USER@HOST:PORT/DB"
            ) from None
        except ImportError as exc:
            raise ValueError(f"the driver of {url.drivername!r} is not installed ({exc.name})") from None
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            url = url.set(database=str(resolve_path(Path(url.database), info)))
        return url.render_as_string(hide_password=False)

    @field_validator("log_file")
    @classmethod
    def _log_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else resolve_path(value, info)


class ReconciliationSettings(Section):
    """[reconciliation]: how often the ledger is compared with the broker, and what counts as a mismatch."""

    interval_seconds: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    cash_tolerance: Annotated[Decimal, Field(ge=0)] = Decimal("0.01")
    qty_tolerance: Annotated[Decimal, Field(ge=0)] = Decimal(0)
    # A difference must still be there this long after it was first seen (fills can be in flight).
    settle_seconds: Annotated[float, Field(ge=0, le=600)] = 2.0


class FeatureSettings(Section):
    """[strategies.features]: the incremental indicators behind the model's inputs."""

    return_lags: Annotated[list[Annotated[int, Field(ge=1, le=64)]], Field(min_length=1)] = [1, 2, 4, 8]
    zscore_window: Annotated[int, Field(ge=5, le=500)] = 20
    rsi_window: Annotated[int, Field(ge=2, le=200)] = 14
    volatility_window: Annotated[int, Field(ge=5, le=500)] = 20
    return_clip: Annotated[float, Field(gt=0, le=1)] = 0.1
    # Optional feature groups, appended after the default columns in extra_choices() order. Bollinger,
    # VWAP and OBV use zscore_window; ATR and the outlier detector use volatility_window.
    extra: list[str] = []
    macd_fast: Annotated[int, Field(ge=2, le=200)] = 12
    macd_slow: Annotated[int, Field(ge=3, le=500)] = 26
    macd_signal: Annotated[int, Field(ge=1, le=200)] = 9
    # Split/outlier handling, off while outlier_k is None: a bar whose open and close both jump from the
    # previous close by more than max(outlier_floor, outlier_k * recent std of returns), in log terms.
    outlier_k: Annotated[float, Field(gt=0, le=1000)] | None = None
    outlier_floor: Annotated[float, Field(gt=0, le=10)] = 0.25

    @staticmethod
    def extra_choices() -> tuple[str, ...]:
        """The names `extra` accepts, in the order their columns come."""
        return ("macd", "bollinger", "atr", "vwap", "obv", "time")

    @field_validator("return_lags")
    @classmethod
    def _lags(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError("return_lags must not repeat")
        return sorted(value)

    @field_validator("extra")
    @classmethod
    def _extra(cls, value: list[str]) -> list[str]:
        choices = cls.extra_choices()
        for name in value:
            if name not in choices:
                raise ValueError(f"unknown extra feature {name!r}; choose from {', '.join(choices)}")
        if len(set(value)) != len(value):
            raise ValueError("extra must not repeat")
        return sorted(value, key=choices.index)  # one column order, however the config lists them

    @model_validator(mode="after")
    def _macd_windows(self) -> FeatureSettings:
        if self.macd_fast >= self.macd_slow:
            raise ValueError(f"macd_fast ({self.macd_fast}) must be below macd_slow ({self.macd_slow})")
        return self


class ModelSettings(Section):
    """[strategies.model]: the LSTM's shape."""

    window: Annotated[int, Field(ge=4, le=512)] = 32
    hidden: Annotated[int, Field(ge=4, le=1024)] = 32
    layers: Annotated[int, Field(ge=1, le=3)] = 2
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1
    # Bars ahead the head predicts, each the log return from the next bar's open to the close h bars on.
    # Decisions use horizon 1 (the bar the order fills in); the others are recorded beside it.
    horizons: Annotated[list[Annotated[int, Field(ge=1, le=500)]], Field(min_length=1, max_length=8)] = [1]
    # Offline analysis only: `run` and `backtest` refuse a bidirectional model.
    bidirectional: StrictBool = False
    # Multi-asset mode: > 0 learns a vector of this size per symbol, appended to every input row.
    asset_embedding: Annotated[int, Field(ge=0, le=64)] = 0
    # "window" re-runs the LSTM over the whole window per bar; "streaming" carries (h, c) per symbol and
    # runs one step per bar (see bot/model/streaming.py for what that changes).
    inference: Literal["window", "streaming"] = "window"

    @field_validator("horizons")
    @classmethod
    def _horizons(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError("horizons must not repeat")
        if 1 not in value:
            raise ValueError("horizons must include 1: decisions are taken on the next bar's return")
        return sorted(value)

    @model_validator(mode="after")
    def _streaming(self) -> ModelSettings:
        if self.inference == "streaming" and self.bidirectional:
            raise ValueError('a bidirectional encoder cannot stream: use inference = "window"')
        return self


class TrainingSettings(Section):
    """[strategies.training]: how `paperbot train` fits the model, and on which span of the replay data."""

    start: datetime | None = None
    end: datetime | None = None
    epochs: Annotated[int, Field(ge=1, le=1000)] = 8
    batch_size: Annotated[int, Field(ge=8, le=65_536)] = 256
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 1e-5
    validation_fraction: Annotated[float, Field(gt=0, lt=0.9)] = 0.2
    patience: Annotated[int, Field(ge=1, le=100)] = 3
    seed: int = 7
    # mse, mae, huber; "directional" adds to the MSE a penalty proportional to how far a forecast of the
    # wrong sign went, so the sign, which decides the trade, weighs more than the size.
    loss: Literal["mse", "mae", "huber", "directional"] = "mse"
    # Cross-validation reported in the card (0 = none): purged k-fold, or walk-forward (expanding, or
    # rolling over the last rolling_days). Training samples whose labels come within embargo_bars of a test
    # span are dropped; the default embargo is the longest horizon.
    cv_folds: Annotated[int, Field(ge=0, le=20)] = 0
    cv: Literal["purged_kfold", "walk_forward"] = "purged_kfold"
    embargo_bars: Annotated[int, Field(ge=0, le=10_000)] | None = None
    walk_forward: Literal["expanding", "rolling"] = "expanding"
    rolling_days: Annotated[int, Field(ge=1, le=36_500)] = 730

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else utc(value)

    @model_validator(mode="after")
    def _cv(self) -> TrainingSettings:
        if self.cv == "purged_kfold" and self.cv_folds == 1:
            raise ValueError("cv_folds: purged k-fold needs at least 2 folds (or 0 for none)")
        return self


def lot_precision_problem(lot: Decimal, places: int | None) -> str | None:
    """Why a lot cannot be written in the quantity precision (no quantity could satisfy both), or None."""
    exponent = lot.normalize().as_tuple().exponent
    if places is not None and isinstance(exponent, int) and exponent < -places:
        return f"lot_size {lot} has more decimals than qty_precision {places}"
    return None


def _hhmm(value: str) -> str:
    if value == "midnight":
        return value
    try:
        time.fromisoformat(value)
    except ValueError:
        raise ValueError(f'{value!r} is neither "midnight" nor a time HH:MM') from None
    return value


class RiskSettings(Section):
    """[strategies.risk]: limits every order passes before it is sent. A limit set to none is off."""

    max_drawdown: Annotated[float, Field(gt=0, lt=1)] = 0.2
    daily_loss_limit: Annotated[float, Field(gt=0, lt=1)] | None = None
    max_position_fraction: Fraction = 0.3
    max_position_notional: Annotated[Decimal, Field(gt=0)] | None = None
    max_gross_exposure: Annotated[float, Field(gt=0, le=10)] = 1.0
    max_net_exposure: Annotated[float, Field(gt=0, le=10)] | None = None
    max_order_notional: Annotated[Decimal, Field(gt=0)] = Decimal(50_000)
    max_orders_per_second: Annotated[int, Field(ge=1)] | None = None
    max_orders_per_day: Annotated[int, Field(ge=1)] | None = None
    max_bar_age_seconds: Annotated[float, Field(gt=0)] | None = None
    max_gap_bars: Annotated[float, Field(ge=1)] | None = None
    price_band: Annotated[float, Field(gt=0)] | None = None
    daily_reset_timezone: str = "UTC"
    daily_reset_time: str = "midnight"
    on_breach: Literal["halt", "reduce"] = "halt"
    flatten_on_breach: StrictBool = False
    lot_size: Annotated[Decimal, Field(gt=0)] = Decimal(1)
    min_qty: Annotated[Decimal, Field(ge=0)] = Decimal(0)
    min_notional: Annotated[Decimal, Field(ge=0)] = Decimal(0)
    qty_precision: Annotated[int, Field(ge=0, le=10)] | None = None
    price_precision: Annotated[int, Field(ge=0, le=10)] | None = None
    cash_buffer: Annotated[float, Field(ge=0, lt=1)] = 0.01
    symbols: dict[str, SymbolRules] = {}

    @field_validator("daily_reset_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {value!r}") from None
        return value

    @field_validator("daily_reset_time")
    @classmethod
    def _reset_time(cls, value: str) -> str:
        return _hhmm(value)


class SizingSettings(Section):
    """[strategies.sizing]: how big the full position (target weight 1) is.

    fixed_fraction: `fraction` of equity (default: max_position_fraction). vol_target: the notional whose
    annualised volatility, from the symbol's realized volatility over `vol_window` bars, is `target_vol` of
    equity. kelly: `kelly_fraction` of the Kelly fraction predicted return / variance of the model's recent
    errors (`error_window` bars), capped at `kelly_cap` of equity. Every mode is capped at
    max_position_fraction, and the checks cap it again."""

    mode: Literal["fixed_fraction", "vol_target", "kelly"] = "fixed_fraction"
    fraction: Annotated[float, Field(gt=0, le=1)] | None = None
    target_vol: Annotated[float, Field(gt=0, le=5)] = 0.15
    vol_window: Annotated[int, Field(ge=2, le=10_000)] = 100
    bars_per_year: Annotated[float, Field(gt=0)] | None = None
    kelly_fraction: Annotated[float, Field(gt=0, le=1)] = 0.25
    kelly_cap: Annotated[float, Field(gt=0, le=1)] = 0.3
    error_window: Annotated[int, Field(ge=2, le=10_000)] = 100


class StrategyConfig(Section):
    """One [[strategies]] entry: symbols, the model that drives them, and their limits."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,47}$")]
    symbols: Annotated[list[Annotated[str, Field(pattern=r"^[A-Za-z0-9./_-]{1,32}$")]], Field(min_length=1)]
    timeframe: str = "1h"
    model_dir: Path
    entry_threshold: Annotated[float, Field(ge=0, le=1)] = 0.0
    full_signal_return: Annotated[float, Field(gt=0, le=1)] = 0.002
    allow_short: StrictBool = False
    rebalance_band: Annotated[float, Field(ge=0, le=1)] = 0.05
    features: FeatureSettings = FeatureSettings()
    model: ModelSettings = ModelSettings()
    training: TrainingSettings = TrainingSettings()
    risk: RiskSettings = RiskSettings()
    sizing: SizingSettings = SizingSettings()

    @field_validator("timeframe")
    @classmethod
    def _timeframe(cls, value: str) -> str:
        parse_timeframe(value)
        return value

    @property
    def embargo(self) -> timedelta:
        """The gap kept between training labels and a test span: embargo_bars, default the longest horizon."""
        bars = self.training.embargo_bars
        return self.bar_interval * (max(self.model.horizons) if bars is None else bars)

    @field_validator("symbols")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("symbols must not repeat")
        return value

    @field_validator("model_dir")
    @classmethod
    def _model_dir(cls, value: Path, info: ValidationInfo) -> Path:
        return resolve_path(value, info)

    @property
    def bar_interval(self) -> timedelta:
        """The timeframe as a timedelta."""
        return parse_timeframe(self.timeframe)


class AppConfig(Section):
    """The whole config.toml."""

    daemon: DaemonConfig = DaemonConfig()
    feed: FeedConfig
    broker: BrokerConfig = Field(default_factory=lambda: {"kind": DEFAULT_BROKER}, validate_default=True)
    reconciliation: ReconciliationSettings = ReconciliationSettings()
    guard: BarGuardConfig = BarGuardConfig()
    strategies: Annotated[list[StrategyConfig], Field(min_length=1)]

    def strategy(self, name: str | None) -> StrategyConfig:
        """The named strategy, or the first when `name` is None."""
        if name is None:
            return self.strategies[0]
        for strategy in self.strategies:
            if strategy.name == name:
                return strategy
        raise ConfigError(
            "strategies", f"no strategy named {name!r} (have {[s.name for s in self.strategies]})"
        )

    @property
    def all_symbols(self) -> list[str]:
        """Every traded symbol, strategy by strategy."""
        return [symbol for strategy in self.strategies for symbol in strategy.symbols]

    def feed_context(
        self, *, backtest: bool = False, start: datetime | None = None, end: datetime | None = None
    ) -> FeedContext:
        """What the feed is built for: every symbol with its strategy's timeframe."""
        return FeedContext(
            {s: strategy.bar_interval for strategy in self.strategies for s in strategy.symbols},
            backtest=backtest,
            start=start,
            end=end,
            keys={s: f"strategies[{i}].symbols" for i, st in enumerate(self.strategies) for s in st.symbols},
        )


def _cross_check(config: AppConfig) -> None:
    """Checks that span sections; each names the exact key at fault."""
    owner: dict[str, str] = {}
    for i, strategy in enumerate(config.strategies):
        _check_symbol_rules(i, strategy.risk, strategy.symbols)
        if strategy.entry_threshold >= strategy.full_signal_return:
            raise ConfigError(
                f"strategies[{i}].entry_threshold",
                f"{strategy.entry_threshold} is not below full_signal_return ({strategy.full_signal_return}):"
                " no forecast could ever ask for a position",
            )
        if strategy.name in [s.name for s in config.strategies[:i]]:
            raise ConfigError(f"strategies[{i}].name", f"{strategy.name!r} is used by another strategy")
        for symbol in strategy.symbols:
            if symbol in owner:
                raise ConfigError(
                    f"strategies[{i}].symbols", f"{symbol} is already traded by strategy {owner[symbol]}"
                )
            owner[symbol] = strategy.name


def _check_symbol_rules(i: int, risk: RiskSettings, symbols: list[str]) -> None:
    key = f"strategies[{i}].risk"
    problem = lot_precision_problem(risk.lot_size, risk.qty_precision)
    if problem:
        raise ConfigError(f"{key}.lot_size", problem)
    for symbol, rules in risk.symbols.items():
        if symbol not in symbols:
            raise ConfigError(f"{key}.symbols.{symbol}", "not a symbol of this strategy")
        places = rules.qty_precision if rules.qty_precision is not None else risk.qty_precision
        problem = lot_precision_problem(rules.lot_size or risk.lot_size, places)
        if problem:
            raise ConfigError(f"{key}.symbols.{symbol}.lot_size", problem)


_UNIONS = {"feed": DEFAULT_FEED, "broker": DEFAULT_BROKER}  # sections chosen by kind, and their default


def _kind(data: dict[str, Any], section: str) -> object:
    table = data.get(section)
    return table.get("kind", _UNIONS[section]) if isinstance(table, dict) else None


def _key(loc: tuple[int | str, ...]) -> str:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key or "(top level)"


def parse_config(data: dict[str, Any], base_dir: Path) -> AppConfig:
    """Validate a parsed TOML document; relative paths resolve against `base_dir`."""
    env_url = os.environ.get(DATABASE_URL_ENV)
    if env_url:  # secrets (a PostgreSQL password) belong in the environment, not in config.toml
        data = {**data, "daemon": {**data.get("daemon", {}), "database_url": env_url}}
    try:
        config = AppConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        first = exc.errors()[0]
        extra = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        reason = first["msg"].removeprefix("Value error, ")
        loc = tuple(first["loc"])
        section = loc[0] if loc and isinstance(loc[0], str) else ""
        if section in _UNIONS and len(loc) > 1 and loc[1] == _kind(data, section):
            loc = (loc[0], *loc[2:])  # ("feed", "alpaca", "stream_url"): the kind's tag is not a key
        if first["type"] == "extra_forbidden":
            reason = "unknown key"
        elif first["type"] == "union_tag_invalid":
            loc, reason = (
                (*loc, "kind"),
                f"unknown kind; choose from {first.get('ctx', {}).get('expected_tags')}",
            )
        raise ConfigError(_key(loc), reason + extra) from exc
    _cross_check(config)
    return config


def load_config(path: Path) -> AppConfig:
    """Read and validate a config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), "config file not found")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from exc
    return parse_config(data, path.resolve().parent)
