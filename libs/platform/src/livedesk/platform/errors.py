"""The platform's exception tree (drawn in the package docstring)."""

from __future__ import annotations

__all__ = [
    "BusError",
    "ConfigError",
    "DecodeError",
    "DependencyError",
    "PlatformError",
    "PublishError",
    "UnroutableError",
]


class PlatformError(Exception):
    """Root of every error raised by livedesk.platform."""


class ConfigError(PlatformError):
    """An environment variable is missing or invalid; the message names it."""


class BusError(PlatformError):
    """Something went wrong on the event bus."""


class PublishError(BusError):
    """The broker did not confirm an event: it was nacked, returned or timed out.

    The event may or may not have been stored; callers retry (consumers are
    idempotent on event_id), they never assume success.
    """


class UnroutableError(PublishError):
    """The broker returned the event: no queue is bound to its type (yet)."""


class DecodeError(BusError):
    """A message body is not a valid LiveDesk event envelope."""


class DependencyError(PlatformError):
    """A server this service needs (PostgreSQL, Redis, RabbitMQ, ...) is unreachable."""
