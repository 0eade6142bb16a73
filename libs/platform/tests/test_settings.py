"""Settings fail fast, naming the bad variable."""

from __future__ import annotations

import pytest

from livedesk.platform.errors import ConfigError
from livedesk.platform.settings import AmqpSettings, ServiceSettings, load_settings


class Both(ServiceSettings, AmqpSettings):
    port: int = 8000


def test_defaults_work_on_a_developer_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AMQP_URL", "PORT", "LOG_LEVEL", "AMQP_RETRY_DELAYS_MS"):
        monkeypatch.delenv(var, raising=False)
    settings = load_settings(Both)
    assert settings.amqp_url.startswith("amqp://")
    assert settings.amqp_retry_delays_ms == (1000, 5000, 30000)


def test_values_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9000")
    monkeypatch.setenv("AMQP_RETRY_DELAYS_MS", "[10, 20]")
    settings = load_settings(Both)
    assert settings.port == 9000
    assert settings.amqp_retry_delays_ms == (10, 20)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("PORT", "eighty"),
        ("LOG_LEVEL", "LOUD"),
        ("AMQP_URL", "http://example"),
        ("AMQP_PREFETCH", "0"),
        ("AMQP_RETRY_DELAYS_MS", "[100, -1]"),
        ("SHUTDOWN_TIMEOUT", "-5"),
    ],
)
def test_bad_variable_is_named(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=var):
        load_settings(Both)


def test_settings_are_frozen() -> None:
    settings = load_settings(Both)
    with pytest.raises(ValueError, match="frozen"):
        settings.port = 1  # type: ignore[misc]
