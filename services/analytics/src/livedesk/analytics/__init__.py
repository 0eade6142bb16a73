"""LiveDesk analytics: every event into ClickHouse (or chDB), reports and search over them.

Exceptions raised by this package derive from :class:`AnalyticsError`::

    AnalyticsError
    ├── StoreError       a ClickHouse / chDB call failed (translated in store.py only)
    └── MigrationError   the migration files themselves are malformed

Start-up failures use the platform's errors, which set the exit code:
``ConfigError`` (2) for a bad variable, ``DependencyError`` (3) when ClickHouse,
chDB's data directory or RabbitMQ cannot be opened.
"""

from __future__ import annotations

from livedesk.analytics.errors import AnalyticsError, MigrationError, StoreError

__all__ = ["AnalyticsError", "MigrationError", "StoreError"]
