"""Chat service configuration, from environment variables (see docs/operations.md)."""

from __future__ import annotations

from pydantic import Field

from livedesk.platform.settings import AmqpSettings, PostgresSettings, ServiceSettings

__all__ = ["ChatSettings"]


class ChatSettings(ServiceSettings, AmqpSettings, PostgresSettings):
    """Everything a chat pod reads from its environment."""

    port: int = Field(8000, ge=1, le=65535)
    database_url: str = "postgresql://postgres@127.0.0.1:5432/livedesk_chat"
    redis_url: str = "redis://127.0.0.1:6379/0"
