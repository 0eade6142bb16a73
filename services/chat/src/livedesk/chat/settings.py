"""Chat service configuration, from environment variables (see docs/operations.md)."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from livedesk.chat.archive_store import ObjectStore, S3Options, open_object_store
from livedesk.chat.shards import ShardMap
from livedesk.platform.auth import AuthSettings
from livedesk.platform.settings import AmqpSettings, PostgresSettings, ServiceSettings

__all__ = ["ChatSettings"]


class ChatSettings(ServiceSettings, AmqpSettings, PostgresSettings, AuthSettings):
    """Everything a chat pod reads from its environment."""

    port: int = Field(8000, ge=1, le=65535)
    database_url: str = "postgresql://postgres@127.0.0.1:5432/livedesk_chat"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # REDIS_URL (and HOT_CACHE_REDIS_URL) name one node of a Redis Cluster:
    # sharded pub/sub, slot-routed commands (docs/operations.md "Redis Cluster").
    redis_cluster: bool = False
    assignment_grpc_url: str = "127.0.0.1:50051"
    pod_id: str = Field("", max_length=128)

    access_token_ttl: int = Field(900, ge=30, le=86400)
    refresh_token_ttl: int = Field(30 * 86400, ge=300, le=365 * 86400)
    visitor_token_ttl: int = Field(12 * 3600, ge=60, le=30 * 86400)
    ws_ticket_ttl: int = Field(30, ge=5, le=300)

    max_message_chars: int = Field(4000, ge=1, le=32000)
    ws_max_frame_bytes: int = Field(64 * 1024, ge=1024, le=1024 * 1024)
    ws_send_queue: int = Field(1000, ge=10, le=100_000)
    ws_messages_per_second: float = Field(10, gt=0, le=10_000)
    ws_message_burst: int = Field(20, ge=1, le=100_000)
    ws_connections_per_user: int = Field(10, ge=1, le=10_000)
    ws_heartbeat: float = Field(30, gt=0, le=600)
    ws_replay_limit: int = Field(500, ge=10, le=10_000)
    presence_interval: float = Field(5, gt=0, le=300)
    outbox_poll_interval: float = Field(0.05, gt=0, le=10)
    message_batch_max: int = Field(100, ge=1, le=1000)

    # Sharding and read replicas (docs/sharding.md). Unset: one database, DATABASE_URL.
    chat_shards: str = ""
    chat_read_replicas: str = ""
    index_sync_interval: float = Field(1.0, gt=0, le=300)
    replica_max_lag: float = Field(10.0, gt=0, le=3600)
    replica_lag_interval: float = Field(1.0, gt=0, le=300)

    # Hot data: recent messages in Redis (livedesk.chat.hot_cache). 0 messages: off.
    hot_cache_messages: int = Field(100, ge=0, le=10_000)
    hot_cache_ttl: int = Field(7 * 86400, ge=60, le=90 * 86400)
    hot_cache_timeout: float = Field(0.25, gt=0, le=10)
    hot_cache_redis_url: str = Field("", pattern=r"^$|^(redis|rediss|unix)://")

    # Cold data (livedesk.chat.archive, docs/operations.md "Archive and retention").
    archive_url: str = ".run/chat/archive"
    archive_after_days: float = Field(30, ge=0, le=36500)
    archive_batch_size: int = Field(200, ge=1, le=10_000)
    archive_interval: float = Field(3600, gt=0, le=7 * 86400)
    # For ARCHIVE_URL=s3://bucket/prefix; empty: botocore's own chain
    # (AWS_ENDPOINT_URL_S3, AWS_REGION, ~/.aws/config). Credentials only come
    # from that chain (AWS_ACCESS_KEY_ID, ..., IRSA), never from LiveDesk settings.
    archive_s3_endpoint_url: str = Field("", pattern=r"^$|^https?://[^\s/?#]+(/[^\s?#]*)?$")
    archive_s3_region: str = Field("", pattern=r"^$|^[a-z0-9-]{1,64}$")
    archive_s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"

    @field_validator("archive_url")
    @classmethod
    def _valid_archive_url(cls, value: str) -> str:
        open_object_store(value)  # ValueError naming ARCHIVE_URL; connects to nothing
        return value

    def open_archive_store(self) -> ObjectStore:
        """The archive's object store (ARCHIVE_URL, ARCHIVE_S3_*); ``aclose`` it at shutdown."""
        return open_object_store(
            self.archive_url,
            S3Options(
                self.archive_s3_endpoint_url,
                self.archive_s3_region,
                self.archive_s3_addressing_style,
            ),
        )

    @model_validator(mode="after")
    def _valid_redis_cluster(self) -> ChatSettings:
        if self.redis_cluster:
            for name, url in (
                ("REDIS_URL", self.redis_url),
                ("HOT_CACHE_REDIS_URL", self.hot_cache_redis_url),
            ):
                parts = urlsplit(url)
                if url and parts.scheme not in ("redis", "rediss"):
                    raise ValueError(
                        f"{name}: a Redis Cluster is reached over redis:// or rediss://"
                    )
                if parts.path not in ("", "/", "/0"):
                    raise ValueError(f"{name}: a Redis Cluster has database 0 only")
        return self

    @model_validator(mode="after")
    def _valid_shard_map(self) -> ChatSettings:
        self.shard_map()  # ValueError naming CHAT_SHARDS / CHAT_READ_REPLICAS
        return self

    def shard_map(self) -> ShardMap:
        """The shard map: CHAT_SHARDS with CHAT_READ_REPLICAS, or all on DATABASE_URL."""
        return ShardMap.parse(self.chat_shards, self.chat_read_replicas, self.database_url)
