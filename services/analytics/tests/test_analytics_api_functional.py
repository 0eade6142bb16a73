"""The reports and search API through a real aiohttp server and a real chDB store.

Checks authentication and roles, tenant isolation, CSV exports, settings, and
every real response against openapi.yaml.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from typing import TYPE_CHECKING

import pytest
from aiohttp.test_utils import TestClient, TestServer

from livedesk.analytics.api import OPENAPI_TEXT, create_app
from livedesk.platform.auth import AuthSettings, load_issuer, load_verifier
from livedesk.platform.health import HealthChecks
from livedesk.platform.testing.openapi import OpenApi

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from aiohttp import web

    from livedesk.analytics.store import Store
    from livedesk.platform.auth import Role
    from livedesk.platform.bus import Envelope

    Ingest = Callable[[Store, list[Envelope]], Awaitable[None]]
    Client = TestClient[web.Request, web.Application]

pytestmark = pytest.mark.integration

SPEC = OpenApi(OPENAPI_TEXT)
AUTH = AuthSettings(livedesk_env="test")
ISSUER = load_issuer(AUTH)
NOW = dt.datetime(2024, 5, 6, 14, tzinfo=dt.UTC)
RANGE = {"from": "2024-05-06T00:00:00Z", "to": "2024-05-07T00:00:00Z"}
TABLES = ["overview", "volume", "agents", "inboxes", "teams", "heatmap"]


def token(role: Role = "admin", tenant: str = "tenant-a", typ: str = "access") -> dict[str, str]:
    signed = ISSUER.issue(
        subject="u1",
        tenant_id=tenant,
        role=role,
        token_type=typ,  # type: ignore[arg-type]
        ttl=dt.timedelta(minutes=5),
    )
    return {"Authorization": f"Bearer {signed}"}


@pytest.fixture
async def client(
    migrated: Store, history: list[Envelope], ingest_events: Ingest
) -> AsyncIterator[Client]:
    await ingest_events(migrated, history)
    health = HealthChecks()
    health.add("clickhouse", migrated.ping)
    # As the service runs it: reports and search on lanes of their own.
    readers = await migrated.open_readers(2)
    app = create_app(migrated, health, load_verifier(AUTH), reads=readers, clock=lambda: NOW)
    try:
        async with TestClient(TestServer(app)) as client:
            yield client
    finally:
        await readers.close()


async def test_reports_answer_while_the_writes_are_held(client: Client, migrated: Store) -> None:
    """An INSERT or a refresh in progress (here: a held write lane) never delays a report."""
    release = threading.Event()
    held = asyncio.ensure_future(migrated._call(lambda _client: release.wait(30)))
    try:
        for name in TABLES:
            resp = await client.get(f"/api/v1/reports/{name}", params=RANGE, headers=token())
            assert resp.status == 200, await resp.text()
        resp = await client.get("/api/v1/search/messages", params={"q": "parcel"}, headers=token())
        assert resp.status == 200
        # A settings write goes through the held lane: it waits for it.
        write = asyncio.ensure_future(
            client.put("/api/v1/reports/settings", json={"time_zone": "UTC"}, headers=token())
        )
        resp = await client.get("/api/v1/reports/settings", headers=token())
        assert resp.status == 200
        assert not write.done()
        assert not held.done()
    finally:
        release.set()
    assert await held is True
    assert (await write).status == 200


async def test_every_report_conforms_to_the_document(client: Client) -> None:
    for name in [*TABLES, "live"]:
        path = f"/api/v1/reports/{name}"
        resp = await client.get(
            path, params=RANGE if name != "live" else {}, headers=token("agent")
        )
        assert resp.status == 200, await resp.text()
        SPEC.check("GET", path, 200, await resp.json())
    resp = await client.get(
        "/api/v1/search/messages", params={"q": "parcel", "limit": "2"}, headers=token()
    )
    body = await resp.json()
    SPEC.check("GET", "/api/v1/search/messages", 200, body)
    assert len(body["items"]) == 2
    assert body["next_cursor"]
    resp = await client.get(
        "/api/v1/search/messages",
        params={"q": "parcel", "limit": "2", "cursor": body["next_cursor"]},
        headers=token(),
    )
    assert [i["body"] for i in (await resp.json())["items"]] == ["Where is my parcel?"]


async def test_overview_numbers_and_csv_exports(client: Client) -> None:
    resp = await client.get("/api/v1/reports/overview", params=RANGE, headers=token())
    body = await resp.json()
    assert body["conversations_created"] == 3
    assert body["wait_time"]["p50"] == 120.0
    assert body["filters"] == {"inbox_id": "", "team_id": "", "agent_id": ""}
    for name in TABLES:
        resp = await client.get(
            f"/api/v1/reports/{name}", params={**RANGE, "format": "csv"}, headers=token()
        )
        assert resp.status == 200
        assert resp.content_type == "text/csv"
        lines = (await resp.text()).splitlines()
        assert len(lines) >= 2, name
    agents = await client.get(
        "/api/v1/reports/agents", params={**RANGE, "format": "csv"}, headers=token()
    )
    header, *rows = (await agents.text()).splitlines()
    assert header.startswith("agent_id,conversations_created,conversations_resolved,")
    assert "first_response_time.business_hours.p90" in header
    assert [r.split(",")[0] for r in rows] == ["a1", "a2"]


async def test_authentication_roles_and_tenants(client: Client) -> None:
    path = "/api/v1/reports/overview"
    resp = await client.get(path)
    assert resp.status == 401
    SPEC.check("GET", path, 401, await resp.json())
    resp = await client.get(path, headers={"Authorization": "Bearer not-a-jwt"})
    assert resp.status == 401
    resp = await client.get(path, headers=token(typ="refresh"))
    assert resp.status == 401
    for route in [path, "/api/v1/search/messages?q=parcel", "/api/v1/reports/live"]:
        resp = await client.get(route, headers=token("visitor"))
        assert resp.status == 403, route
        SPEC.check("GET", route.split("?")[0], 403, await resp.json())
    # tenant-b's token sees tenant-b's data only, whatever the parameters say.
    resp = await client.get(
        path, params={**RANGE, "tenant_id": "tenant-a"}, headers=token(tenant="tenant-b")
    )
    assert (await resp.json())["conversations_created"] == 1
    resp = await client.get(
        "/api/v1/search/messages", params={"q": "parcel"}, headers=token(tenant="tenant-b")
    )
    assert [i["body"] for i in (await resp.json())["items"]] == ["parcel invoice refund"]


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/reports/overview", {"from": "yesterday"}),
        ("/api/v1/reports/overview", {"from": "2024-05-06T00:00:00"}),
        (
            "/api/v1/reports/overview",
            {"from": "2024-05-07T00:00:00Z", "to": "2024-05-06T00:00:00Z"},
        ),
        (
            "/api/v1/reports/overview",
            {"from": "2020-01-01T00:00:00Z", "to": "2024-01-01T00:00:00Z"},
        ),
        ("/api/v1/reports/overview", {"format": "xml"}),
        ("/api/v1/reports/agents", {"inbox_id": "bad id!"}),
        ("/api/v1/reports/volume", {"interval": "minute"}),
        ("/api/v1/search/messages", {"q": "!!"}),
        ("/api/v1/search/messages", {"q": "x", "limit": "0"}),
        ("/api/v1/search/messages", {"q": "x", "status": "lost"}),
        ("/api/v1/search/messages", {"q": "x", "cursor": "%%%"}),
    ],
)
async def test_bad_parameters_are_422(client: Client, path: str, params: dict[str, str]) -> None:
    resp = await client.get(path, params=params, headers=token())
    assert resp.status == 422
    SPEC.check("GET", path, 422, await resp.json())


async def test_settings_admin_only_and_used_by_reports(client: Client) -> None:
    path = "/api/v1/reports/settings"
    resp = await client.get(path, headers=token("agent"))
    assert await resp.json() == {"time_zone": "UTC"}
    resp = await client.put(path, json={"time_zone": "Europe/Paris"}, headers=token("agent"))
    assert resp.status == 403
    resp = await client.put(path, json={"time_zone": "Mars/Olympus"}, headers=token())
    assert resp.status == 422
    SPEC.check("PUT", path, 422, await resp.json())
    resp = await client.put(path, json={"time_zone": "Europe/Paris"}, headers=token())
    assert resp.status == 200
    SPEC.check("PUT", path, 200, await resp.json())
    heat = await client.get("/api/v1/reports/heatmap", params=RANGE, headers=token())
    assert (await heat.json())["time_zone"] == "Europe/Paris"

    hours = "/api/v1/reports/settings/business-hours/web"
    body = {
        "time_zone": "Europe/Paris",
        "windows": [
            {"weekday": 1, "start": "11:01", "end": "12:05"},
            {"weekday": 1, "start": "12:10", "end": "19:00"},
        ],
    }
    resp = await client.put(hours, json=body, headers=token("agent"))
    assert resp.status == 403
    overlapping = {
        **body,
        "windows": [*body["windows"], {"weekday": 1, "start": "12:00", "end": "13:00"}],
    }
    resp = await client.put(hours, json=overlapping, headers=token())
    assert resp.status == 422
    resp = await client.put(hours, json=body, headers=token())
    assert resp.status == 200
    SPEC.check("PUT", "/api/v1/reports/settings/business-hours/{inbox_id}", 200, await resp.json())
    assert (await resp.json())["windows"] == body["windows"]
    listed = await client.get("/api/v1/reports/settings/business-hours", headers=token("agent"))
    SPEC.check("GET", "/api/v1/reports/settings/business-hours", 200, await listed.json())
    overview = await (
        await client.get("/api/v1/reports/overview", params=RANGE, headers=token())
    ).json()
    assert overview["wait_time"]["business_hours"] == {
        "count": 3,
        "avg": 140.0,
        "p50": 60.0,
        "p90": 252.0,
    }
    # Another tenant's admin cannot see or change them.
    other = await client.get(
        "/api/v1/reports/settings/business-hours", headers=token(tenant="tenant-b")
    )
    assert (await other.json()) == {"inboxes": []}
    resp = await client.delete(hours, headers=token())
    assert resp.status == 204
    overview = await (
        await client.get("/api/v1/reports/overview", params=RANGE, headers=token())
    ).json()
    assert overview["wait_time"]["business_hours"]["count"] == 0


def test_openapi_documents_exactly_the_routes_served(migrated: Store) -> None:
    app = create_app(migrated, HealthChecks(), load_verifier(AUTH))
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert served == set(SPEC.operations())


async def test_openapi_is_served(client: Client) -> None:
    resp = await client.get("/api/v1/reports/openapi.yaml")
    assert resp.status == 200
    assert await resp.text() == OPENAPI_TEXT
