"""Typed, frozen settings loaded once from environment variables.

Each service subclasses :class:`ServiceSettings`; :func:`load_settings` builds
it and turns any validation problem into a :class:`ConfigError` that names
the environment variable, so a bad deployment fails at start, loudly.
"""

from __future__ import annotations

from typing import Literal, TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from livedesk.platform.errors import ConfigError

__all__ = ["AmqpSettings", "PostgresSettings", "ServiceSettings", "load_settings"]

S = TypeVar("S", bound=BaseSettings)


class ServiceSettings(BaseSettings):
    """Settings every service has. Field ``foo_bar`` is read from ``FOO_BAR``."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)

    livedesk_env: Literal["dev", "test", "prod"] = "dev"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    host: str = "127.0.0.1"
    shutdown_timeout: float = Field(10.0, gt=0, le=300)


class AmqpSettings(BaseSettings):
    """Event-bus settings, mixed into the services that use RabbitMQ."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    amqp_exchange: str = "livedesk.events"
    amqp_queue_prefix: str = ""
    amqp_prefetch: int = Field(64, ge=1, le=65535)
    amqp_publish_timeout: float = Field(10.0, gt=0, le=300)
    amqp_retry_delays_ms: tuple[int, ...] = Field((1000, 5000, 30000), min_length=0, max_length=10)

    @field_validator("amqp_url")
    @classmethod
    def _amqp_scheme(cls, value: str) -> str:
        if not value.startswith(("amqp://", "amqps://")):
            raise ValueError("must be an amqp:// or amqps:// URL")
        return value

    @field_validator("amqp_retry_delays_ms")
    @classmethod
    def _positive_delays(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(d <= 0 for d in value):
            raise ValueError("every delay must be a positive number of milliseconds")
        return value


class PostgresSettings(BaseSettings):
    """Database settings of a service that owns a PostgreSQL database.

    Each service overrides ``database_url``'s default with its own database.
    """

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)

    database_url: str = "postgresql://postgres@127.0.0.1:5432/livedesk"
    db_auto_create: bool = True
    db_pool_size: int = Field(10, ge=1, le=200)

    @field_validator("database_url")
    @classmethod
    def _postgres_scheme(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return value


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
