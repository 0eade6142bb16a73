"""LiveDesk platform: the infrastructure every service shares.

Only infrastructure lives here (settings, logging, tracing, the event bus,
PostgreSQL/Redis plumbing, health, metrics, runtime); never domain logic.

Exceptions raised by this package all derive from :class:`PlatformError`::

    PlatformError
    ├── ConfigError          a bad or missing environment variable
    ├── BusError
    │   ├── PublishError     the broker did not confirm an event
    │   │   └── UnroutableError   ... because no queue is bound to its type
    │   └── DecodeError      a body that is not a valid LiveDesk envelope
    └── DependencyError      a server we need did not answer at start-up
"""

from __future__ import annotations

from livedesk.platform.errors import (
    BusError,
    ConfigError,
    DecodeError,
    DependencyError,
    PlatformError,
    PublishError,
    UnroutableError,
)

__all__ = [
    "BusError",
    "ConfigError",
    "DecodeError",
    "DependencyError",
    "PlatformError",
    "PublishError",
    "UnroutableError",
]
