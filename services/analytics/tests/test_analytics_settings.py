"""AnalyticsSettings: defaults that work locally, and bad values named at start."""

from __future__ import annotations

import pytest

from livedesk.analytics.settings import AnalyticsSettings
from livedesk.platform.errors import ConfigError
from livedesk.platform.settings import load_settings

_VARS = ("PORT", "CLICKHOUSE_URL", "CHDB_PATH", "INGEST_BATCH_SIZE", "INGEST_FLUSH_INTERVAL")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in _VARS:
        monkeypatch.delenv(var, raising=False)


def test_defaults_use_chdb_locally() -> None:
    settings = load_settings(AnalyticsSettings)
    assert settings.port == 8002
    assert settings.clickhouse_url is None
    assert settings.chdb_path == ".run/analytics/chdb"
    assert settings.ingest_batch_size == 5000
    assert settings.ingest_flush_interval == 0.5
    assert settings.report_query_concurrency == 2
    assert settings.report_warm_up_tenants == 3


def test_values_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "18002")
    monkeypatch.setenv("CLICKHOUSE_URL", " http://default:pw@ch.example:8123/livedesk ")
    monkeypatch.setenv("INGEST_BATCH_SIZE", "100")
    monkeypatch.setenv("INGEST_FLUSH_INTERVAL", "0.05")
    monkeypatch.setenv("REPORT_QUERY_CONCURRENCY", "4")
    settings = load_settings(AnalyticsSettings)
    assert settings.port == 18002
    assert settings.clickhouse_url == "http://default:pw@ch.example:8123/livedesk"
    assert settings.ingest_batch_size == 100
    assert settings.ingest_flush_interval == 0.05
    assert settings.report_query_concurrency == 4


def test_empty_clickhouse_url_means_chdb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLICKHOUSE_URL", "")
    assert load_settings(AnalyticsSettings).clickhouse_url is None


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("INGEST_BATCH_SIZE", "0"),
        ("INGEST_BATCH_SIZE", "40000"),
        ("INGEST_FLUSH_INTERVAL", "0"),
        ("INGEST_FLUSH_INTERVAL", "-1"),
        ("PORT", "70000"),
        ("CHDB_PATH", ""),
        ("CLICKHOUSE_URL", "chdb:///var/lib/x"),
        ("CLICKHOUSE_URL", "localhost:8123"),
        ("REPORT_QUERY_CONCURRENCY", "0"),
        ("REPORT_QUERY_CONCURRENCY", "33"),
        ("REPORT_WARM_UP_TENANTS", "-1"),
        ("REPORT_WARM_UP_TENANTS", "101"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=var):
        load_settings(AnalyticsSettings)
