"""`paperbot evaluate`: pick the held-out span, run the evaluation, write the card, the page and the books."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.config import AppConfig
from bot.errors import ConfigError
from bot.evaluation.report import attach_to_card, write_html
from bot.evaluation.runner import Evaluation, EvaluationSettings, evaluate
from bot.model.registry import latest_version


async def run_evaluation(
    config: AppConfig,
    config_path: Path,
    strategy_name: str | None,
    *,
    start: datetime | None,
    end: datetime | None,
    settings: EvaluationSettings,
    log: Any,
) -> tuple[Evaluation, Path]:
    """Evaluate on [start, end) (default: the replay span, which the deployed model never saw)."""
    strategy = config.strategy(strategy_name)
    span_start, span_end = config.feed.span()
    start = start or span_start
    if start is None:
        raise ConfigError("feed.start", "evaluate needs a held-out span: set [feed] start or pass --start")
    folder = config_path.resolve().parent / "var" / "evaluations"
    folder.mkdir(parents=True, exist_ok=True)
    database = folder / f"{strategy.name}-{datetime.now(UTC):%Y%m%dT%H%M%S}.sqlite"
    # One line per bar from five replays would drown the progress lines.
    logging.getLogger("paperbot.engine").setLevel(logging.WARNING)
    evaluation = await evaluate(
        config,
        strategy,
        database,
        start=start,
        end=end or span_end,
        settings=settings,
        progress=lambda event, fields: log.info(event, **fields),
    )
    # The card travels with the model: name the books relative to the config, not by this machine's path.
    evaluation.report["database"] = str(database.relative_to(config_path.resolve().parent))
    version = latest_version(strategy.model_dir)
    attach_to_card(version, evaluation.report)
    page = write_html(version / "evaluation.html", evaluation.report, evaluation.curves)
    log.info("evaluated", strategy=strategy.name, card=str(version), page=str(page), database=str(database))
    return evaluation, page
