"""The one clock of Autopack: timezone-aware UTC.

Its own module so that everything (the contract, telemetry events, the database layer,
the dashboard) can import it without importing each other. API replicas and executors
are expected to run NTP: leases and backoffs compare times taken on different machines.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now, in UTC, timezone-aware (naive datetimes are refused by the database layer)."""
    return datetime.now(UTC)
