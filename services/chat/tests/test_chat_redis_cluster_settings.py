"""REDIS_CLUSTER: off by default, and settings a cluster cannot serve stop the pod at start."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from livedesk.chat.settings import ChatSettings


def test_standalone_is_the_default() -> None:
    assert ChatSettings().redis_cluster is False


def test_cluster_takes_redis_urls_of_database_0(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_CLUSTER", "true")
    monkeypatch.setenv("REDIS_URL", "rediss://redis-cluster.example:6379")
    monkeypatch.setenv("HOT_CACHE_REDIS_URL", "redis://cache-cluster.example:6379/0")
    settings = ChatSettings()
    assert settings.redis_cluster is True


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"REDIS_CLUSTER": "maybe"}, "redis_cluster"),
        ({"REDIS_CLUSTER": "true", "REDIS_URL": "unix:///run/redis.sock"}, "REDIS_URL"),
        ({"REDIS_CLUSTER": "true", "REDIS_URL": "redis://h:6379/2"}, "database 0 only"),
        (
            {"REDIS_CLUSTER": "true", "HOT_CACHE_REDIS_URL": "unix:///run/cache.sock"},
            "HOT_CACHE_REDIS_URL",
        ),
    ],
)
def test_settings_a_cluster_cannot_serve_are_refused(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], message: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=message):
        ChatSettings()
