"""Chat's REST API through a real aiohttp server and a real PostgreSQL database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from livedesk.chat.api import OPENAPI_TEXT
from livedesk.chat.service import create_app
from livedesk.chat.store import ConversationStore
from livedesk.platform.bus import decode, payload_of
from livedesk.platform.health import HealthChecks
from livedesk.platform.http import HEALTH_KEY
from livedesk.platform.postgres import PLATFORM_MIGRATIONS, open_database
from livedesk.platform.testing.openapi import OpenApi

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]
SPEC = OpenApi(OPENAPI_TEXT)
CONVERSATIONS = "/api/v1/conversations"
CONVERSATION = "/api/v1/conversations/{conversation_id}"
TENANT = "0190b4a2-7c1e-7d3a-9f00-2b5c8e4d1a6f"


@pytest.fixture
async def pool(pg_database: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await open_database(pg_database, [PLATFORM_MIGRATIONS, "livedesk.chat.migrations"])
    yield pool
    await pool.close()


@pytest.fixture
async def client(pool: asyncpg.Pool) -> AsyncIterator[Client]:
    health = HealthChecks()
    health.add("postgres", lambda: pool.fetchval("SELECT 1"))
    app = create_app(ConversationStore(pool), health)
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_create_commits_conversation_and_its_event_together(
    client: Client, pool: asyncpg.Pool
) -> None:
    resp = await client.post(
        "/api/v1/conversations",
        json={"tenant_id": TENANT, "inbox_id": "website", "priority": "urgent", "subject": "hi"},
    )
    assert resp.status == 201
    body = await resp.json()
    SPEC.check("POST", CONVERSATIONS, 201, body)
    assert body["status"] == "queued"
    assert body["priority"] == "urgent"

    rows = await pool.fetch("SELECT routing_key, body FROM outbox")
    assert [r["routing_key"] for r in rows] == ["conversation.created"]
    event = decode(rows[0]["body"])
    assert event.conversation_id == body["id"]
    assert event.tenant_id == TENANT
    assert event.producer == "chat"
    assert payload_of(event).subject == "hi"  # type: ignore[attr-defined]

    got = await client.get(f"/api/v1/conversations/{body['id']}", params={"tenant_id": TENANT})
    assert got.status == 200
    SPEC.check("GET", CONVERSATION, 200, await got.json())
    assert (await got.json())["id"] == body["id"]


async def test_other_tenant_cannot_read_it(client: Client) -> None:
    resp = await client.post("/api/v1/conversations", json={"tenant_id": TENANT, "inbox_id": "w"})
    conversation_id = (await resp.json())["id"]
    other = str(uuid.uuid4())
    got = await client.get(f"/api/v1/conversations/{conversation_id}", params={"tenant_id": other})
    assert got.status == 404
    SPEC.check("GET", CONVERSATION, 404, await got.json())
    assert (await got.json())["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"{not json", "application/json", 400, "bad_request"),
        (b'{"tenant_id": "x", "inbox_id": "w"}', "application/json", 422, "validation_error"),
        (b'{"tenant_id": "' + TENANT.encode() + b'"}', "application/json", 422, "validation_error"),
        (
            b'{"tenant_id": "' + TENANT.encode() + b'", "inbox_id": "w", "extra": 1}',
            "application/json",
            422,
            "validation_error",
        ),
        (
            b'{"tenant_id": "' + TENANT.encode() + b'", "inbox_id": "w", "priority": "max"}',
            "application/json",
            422,
            "validation_error",
        ),
        (b"[]", "application/json", 422, "validation_error"),
        (b"tenant_id=x", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b"{" + b'"a":"' + b"x" * 70_000 + b'"}', "application/json", 413, "payload_too_large"),
    ],
    ids=[
        "malformed",
        "bad-uuid",
        "missing-field",
        "unknown-field",
        "bad-enum",
        "array",
        "form",
        "huge",
    ],
)
async def test_bad_bodies_get_4xx_json(
    client: Client,
    pool: asyncpg.Pool,
    body: bytes,
    content_type: str,
    status: int,
    code: str,
) -> None:
    resp = await client.post(
        "/api/v1/conversations", data=body, headers={"Content-Type": content_type}
    )
    assert resp.status == status
    SPEC.check("POST", CONVERSATIONS, status, await resp.json())
    assert (await resp.json())["error"]["code"] == code
    assert await pool.fetchval("SELECT count(*) FROM conversations") == 0


async def test_unknown_path_and_method_are_json_errors(client: Client) -> None:
    resp = await client.get("/api/v1/nothing-here")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"
    resp = await client.delete("/api/v1/conversations")
    assert resp.status == 405
    assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_request_id_is_echoed_or_made(client: Client) -> None:
    resp = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert resp.headers["X-Request-ID"] == "abc-123"
    resp = await client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert resp.headers["X-Request-ID"] != "bad id with spaces"


async def test_readyz_reports_checks_and_draining(client: Client) -> None:
    resp = await client.get("/readyz")
    assert resp.status == 200
    SPEC.check("GET", "/readyz", 200, await resp.json())
    assert (await resp.json())["checks"]["postgres"]["ok"] is True
    client.app[HEALTH_KEY].draining = True
    resp = await client.get("/readyz")
    assert resp.status == 503
    SPEC.check("GET", "/readyz", 503, await resp.json())
    assert (await resp.json())["status"] == "draining"


def test_openapi_documents_exactly_the_routes_served(pool: asyncpg.Pool) -> None:
    app = create_app(ConversationStore(pool), HealthChecks())
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert served == set(SPEC.operations())


async def test_openapi_is_served(client: Client) -> None:
    resp = await client.get("/api/v1/openapi.yaml")
    assert resp.status == 200
    assert await resp.text() == OPENAPI_TEXT
