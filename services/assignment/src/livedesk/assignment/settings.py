"""Assignment service configuration, from environment variables (see docs/operations.md)."""

from __future__ import annotations

from pydantic import Field

from livedesk.platform.settings import AmqpSettings, PostgresSettings, ServiceSettings

__all__ = ["AssignmentSettings"]


class AssignmentSettings(ServiceSettings, AmqpSettings, PostgresSettings):
    """Everything an assignment replica reads from its environment."""

    port: int = Field(8001, ge=1, le=65535)
    grpc_port: int = Field(50051, ge=1, le=65535)
    database_url: str = "postgresql://postgres@127.0.0.1:5432/livedesk_assignment"
    redis_url: str = "redis://127.0.0.1:6379/0"
