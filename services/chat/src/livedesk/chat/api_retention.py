"""Admin endpoints for data lifecycle: the tenant's retention period, visitor erasure."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from livedesk.chat.access import authenticate
from livedesk.chat.api_support import CHAT_KEY, parse_body, path_uuid
from livedesk.chat.erasure import Eraser

__all__ = ["ERASER_KEY", "add_retention_routes"]

ERASER_KEY = web.AppKey("eraser", Eraser)


class Retention(BaseModel):
    model_config = ConfigDict(extra="forbid")
    retention_days: Annotated[int, Field(ge=1, le=36500)] | None


def _retention_json(request: web.Request, days: int | None) -> dict[str, object]:
    return {
        "retention_days": days,
        "archive_after_days": request.app[CHAT_KEY].settings.archive_after_days,
    }


async def get_retention(request: web.Request) -> web.Response:
    """GET /api/v1/retention: the tenant's retention period (and the archive window)."""
    admin = authenticate(request, "admin")
    days = await request.app[ERASER_KEY].retention_days(admin.tenant_id)
    return web.json_response(_retention_json(request, days))


async def put_retention(request: web.Request) -> web.Response:
    """PUT /api/v1/retention: set it (null: keep conversations for ever)."""
    admin = authenticate(request, "admin")
    body = await parse_body(request, Retention)
    await request.app[ERASER_KEY].set_retention_days(admin.tenant_id, body.retention_days)
    return web.json_response(_retention_json(request, body.retention_days))


async def erase_visitor(request: web.Request) -> web.Response:
    """POST /api/v1/visitors/{visitor_id}/erasure: forget the visitor everywhere.

    200 with the finished request; 202 when a store did not answer (the
    request stays pending and the archive job finishes it). Repeating it
    returns the same request.
    """
    admin = authenticate(request, "admin")
    eraser = request.app[ERASER_KEY]
    erasure = await eraser.request(
        admin.tenant_id, path_uuid(request, "visitor_id"), admin.subject_id
    )
    if erasure.status != "done":
        try:
            erasure = await eraser.run(erasure)
        except Exception as exc:  # pending: the archive job retries
            erasure = await eraser.failed(erasure, exc)
            return web.json_response(erasure.to_json(), status=202)
    return web.json_response(erasure.to_json())


async def get_erasure(request: web.Request) -> web.Response:
    """GET /api/v1/visitors/{visitor_id}/erasure: where the visitor's erasure stands."""
    admin = authenticate(request, "admin")
    erasure = await request.app[ERASER_KEY].get(admin.tenant_id, path_uuid(request, "visitor_id"))
    return web.json_response(erasure.to_json())


def add_retention_routes(app: web.Application, eraser: Eraser) -> None:
    """Mount the data-lifecycle endpoints."""
    app[ERASER_KEY] = eraser
    app.router.add_get("/api/v1/retention", get_retention)
    app.router.add_put("/api/v1/retention", put_retention)
    app.router.add_post("/api/v1/visitors/{visitor_id}/erasure", erase_visitor)
    app.router.add_get("/api/v1/visitors/{visitor_id}/erasure", get_erasure)
