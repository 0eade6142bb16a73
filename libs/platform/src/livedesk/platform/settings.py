"""Typed, frozen settings loaded once from environment variables.

Each service subclasses :class:`ServiceSettings`; :func:`load_settings` builds
it and turns any validation problem into a :class:`ConfigError` that names
the environment variable, so a bad deployment fails at start, loudly.
"""

from __future__ import annotations

from typing import Literal, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from livedesk.platform.errors import ConfigError

__all__ = ["AmqpSettings", "ServiceSettings", "load_settings"]

S = TypeVar("S", bound=BaseSettings)


class ServiceSettings(BaseSettings):
    """Settings every service has. Field ``foo_bar`` is read from ``FOO_BAR``."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)

    livedesk_env: Literal["dev", "test", "prod"] = "dev"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    host: str = "127.0.0.1"
    shutdown_timeout: float = 10.0


class AmqpSettings(BaseSettings):
    """Event-bus settings, mixed into the services that use RabbitMQ."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    amqp_exchange: str = "livedesk.events"
    amqp_queue_prefix: str = ""
    amqp_prefetch: int = 64
    amqp_publish_timeout: float = 10.0
    amqp_retry_delays_ms: tuple[int, ...] = (1000, 5000, 30000)


def load_settings(cls: type[S]) -> S:
    """Build ``cls`` from the environment, or raise ConfigError naming each bad variable."""
    try:
        return cls()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = "_".join(str(part) for part in err["loc"]).upper() or "?"
            problems.append(f"{name}: {err['msg']}")
        raise ConfigError("invalid environment: " + "; ".join(problems)) from None
