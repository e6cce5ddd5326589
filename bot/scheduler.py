"""Periodic work on APScheduler's AsyncIOScheduler: equity snapshots, reconciliation with the broker and
the systemd watchdog ping.
Jobs are short coroutines on the loop; anything heavy belongs in an executor."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from bot.logs import get_logger


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Intervals of the periodic jobs; a watchdog of None means systemd did not ask for one."""

    equity_snapshot_seconds: float
    reconcile_seconds: float
    watchdog_seconds: float | None = None


def build_scheduler(
    config: SchedulerConfig,
    snapshot: Callable[[], Awaitable[None]],
    reconcile: Callable[[], Awaitable[None]],
    watchdog: Callable[[], Awaitable[None]],
) -> AsyncIOScheduler:
    """A scheduler with the daemon's jobs; start it inside the running loop."""
    log = get_logger("paperbot.scheduler")
    scheduler = AsyncIOScheduler(
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30}, timezone="UTC"
    )
    scheduler.add_job(
        snapshot,
        IntervalTrigger(seconds=config.equity_snapshot_seconds),
        id="equity_snapshot",
        replace_existing=True,
    )
    # The job only asks: the engine reconciles between batches, so a pass never races a batch's fills.
    scheduler.add_job(
        reconcile, IntervalTrigger(seconds=config.reconcile_seconds), id="reconcile", replace_existing=True
    )
    if config.watchdog_seconds:
        scheduler.add_job(
            watchdog, IntervalTrigger(seconds=config.watchdog_seconds), id="watchdog", replace_existing=True
        )

    def on_event(event: Any) -> None:
        if getattr(event, "exception", None) is not None:
            log.error("job_failed", job=event.job_id, error=repr(event.exception))
        else:
            log.warning("job_missed", job=event.job_id)

    scheduler.add_listener(on_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED)
    return scheduler
