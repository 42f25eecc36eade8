"""Calendar helpers built on the standard library only."""

from __future__ import annotations

import calendar
from datetime import date, timedelta


def parse_iso_date(text: str) -> date:
    """'2024-02-29' -> date(2024, 2, 29); raises ValueError with the bad text."""
    try:
        return date.fromisoformat(text.strip())
    except ValueError as exc:
        raise ValueError(f"not an ISO date (YYYY-MM-DD): {text!r}") from exc


def days_between(start: date, end: date) -> int:
    """Signed number of days from ``start`` to ``end``."""
    return (end - start).days


def is_weekend(day: date) -> bool:
    return day.weekday() >= 5


def add_business_days(day: date, count: int) -> date:
    """Move ``count`` working days (Mon-Fri) forward, or backward when negative."""
    step = 1 if count >= 0 else -1
    remaining = abs(count)
    current = day
    while remaining:
        current += timedelta(days=step)
        if not is_weekend(current):
            remaining -= 1
    return current


def month_range(year: int, month: int) -> tuple[date, date]:
    """First and last day of a month."""
    last = calendar.monthrange(year, month)[1]
    return date(year, month, 1), date(year, month, last)


def quarter_of(day: date) -> int:
    """Calendar quarter, 1 to 4."""
    return (day.month - 1) // 3 + 1


def humanize_days(days: int) -> str:
    """0 -> 'today', 1 -> 'tomorrow', -1 -> 'yesterday', 5 -> 'in 5 days', -3 -> '3 days ago'."""
    if days == 0:
        return "today"
    if days == 1:
        return "tomorrow"
    if days == -1:
        return "yesterday"
    return f"in {days} days" if days > 0 else f"{-days} days ago"
