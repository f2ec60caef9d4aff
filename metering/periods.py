"""Meter periods (UTC): the start of the minute, day or month a moment falls in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from metering.models import Window

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def period_start(window: str, now: datetime) -> datetime:
    now = now.astimezone(UTC)
    if window == Window.MINUTE:
        return now.replace(second=0, microsecond=0)
    if window == Window.DAY:
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    if window == Window.MONTH:
        return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return EPOCH  # gauges (concurrency) have one everlasting period


def period_end(window: str, start: datetime) -> datetime | None:
    if window == Window.MINUTE:
        return start + timedelta(minutes=1)
    if window == Window.DAY:
        return start + timedelta(days=1)
    if window == Window.MONTH:
        return (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    return None


def seconds_until_reset(window: str, now: datetime) -> int:
    end = period_end(window, period_start(window, now))
    if end is None:
        return 1
    return max(1, int((end - now).total_seconds()) + 1)
