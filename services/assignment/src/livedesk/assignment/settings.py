"""Assignment service configuration, from environment variables (see docs/routing.md)."""

from __future__ import annotations

from pydantic import Field, field_validator

from livedesk.platform.settings import AmqpSettings, PostgresSettings, ServiceSettings

__all__ = ["AssignmentSettings"]


class AssignmentSettings(ServiceSettings, AmqpSettings, PostgresSettings):
    """Everything an assignment replica reads from its environment."""

    port: int = Field(8001, ge=1, le=65535)
    grpc_port: int = Field(50051, ge=1, le=65535)
    database_url: str = "postgresql://postgres@127.0.0.1:5432/livedesk_assignment"
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Prefix of every Redis key; the tenant id follows as a Redis Cluster hash tag.
    redis_key_prefix: str = "livedesk:assignment:"
    #: Handlers running at once on the event queue (and the prefetch at least): their
    #: decisions share script calls and transactions, so more in flight = fewer round trips.
    consumer_concurrency: int = Field(256, ge=1, le=1024)
    #: Seconds an online agent may go unnamed by console presence reports before it is away.
    presence_grace_seconds: float = Field(15.0, gt=0, le=3600)
    #: Seconds an assigned agent has for a first reply before the conversation is requeued;
    #: 0 disables the SLA.
    first_reply_sla_seconds: float = Field(120.0, ge=0, le=86400)
    #: Seconds between two announcements of queue positions (coalesced per conversation).
    queue_position_interval: float = Field(1.0, gt=0, le=300)
    #: Seconds between two passes of the background loops (presence, SLA, shifts, repair).
    sweep_interval: float = Field(1.0, gt=0, le=300)
    #: Decisions written to PostgreSQL in one transaction at most.
    record_batch_size: int = Field(500, ge=1, le=10000)
    #: New conversations of one tenant routed by one script call at most.
    route_batch_size: int = Field(200, ge=1, le=2000)
    #: Route script calls of one tenant in flight at once per replica (arrivals meanwhile
    #: wait and share the next call: fewer, larger round trips under load).
    route_batches_in_flight: int = Field(2, ge=1, le=64)
    #: Outbox rows the relay publishes per round (confirms in flight together).
    outbox_batch_size: int = Field(2000, ge=1, le=10000)

    @field_validator("redis_key_prefix")
    @classmethod
    def _no_hash_tag(cls, value: str) -> str:
        if "{" in value or "}" in value:
            raise ValueError("must not contain '{' or '}' (the tenant id is the hash tag)")
        return value
