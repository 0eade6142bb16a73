"""The analytics service's exception tree (drawn in the package docstring)."""

from __future__ import annotations

__all__ = ["AnalyticsError", "MigrationError", "StoreError"]


class AnalyticsError(Exception):
    """Root of every error raised by livedesk.analytics."""


class StoreError(AnalyticsError):
    """A ClickHouse (or chDB) call failed: bad SQL, a lost server, a closed store."""


class MigrationError(AnalyticsError):
    """The schema migrations are malformed, or the database is ahead of this code."""
