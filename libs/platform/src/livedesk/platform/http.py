"""Operational HTTP routes every service serves: /healthz, /readyz, /metrics."""

from __future__ import annotations

import re

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from livedesk.platform.health import HealthChecks
from livedesk.platform.ids import uuid7_str
from livedesk.platform.logging import get_logger
from livedesk.platform.metrics import CONTENT_TYPE_LATEST, render_metrics
from livedesk.platform.tracing import trace_context

__all__ = [
    "HEALTH_KEY",
    "add_ops_routes",
    "error_response",
    "json_errors",
    "request_context",
]

log = get_logger("livedesk.http")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

HEALTH_KEY = web.AppKey("livedesk_health", HealthChecks)


def error_response(status: int, code: str, message: str) -> web.Response:
    """The API's one error shape: ``{"error": {"code", "message"}}``."""
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


async def _healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    health = request.app[HEALTH_KEY]
    ready, results = await health.run()
    body = {
        "status": "ready" if ready else ("draining" if health.draining else "not_ready"),
        "checks": {r.name: {"ok": r.ok, "detail": r.detail} for r in results},
    }
    return web.json_response(body, status=200 if ready else 503)


async def _metrics(_: web.Request) -> web.Response:
    resp = web.Response(body=render_metrics())
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    resp.charset = "utf-8"
    return resp


def add_ops_routes(app: web.Application, health: HealthChecks) -> None:
    """Mount /healthz, /readyz and /metrics on ``app``."""
    app[HEALTH_KEY] = health
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind request id and trace to every log line of the request; echo X-Request-ID.

    Not for WebSocket upgrades: a socket lives for hours and is many operations,
    so its handler binds a trace per frame instead of holding one (and these
    context managers' memory) for its whole life.
    """
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return await handler(request)
    given = request.headers.get("X-Request-ID", "")
    request_id = given if _REQUEST_ID.match(given) else uuid7_str()
    with (
        trace_context(request.headers.get("traceparent")),
        structlog.contextvars.bound_contextvars(request_id=request_id),
    ):
        response = await handler(request)
        response.headers["X-Request-ID"] = request_id
        return response


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
}


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as ``{"error": {"code", "message"}}``; nothing leaks a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        code = _STATUS_CODES.get(exc.status, "error")
        response = error_response(exc.status, code, exc.reason)
        for name in ("WWW-Authenticate", "Allow", "Retry-After"):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response
    except Exception:
        log.exception("unhandled_error", path=request.path, method=request.method)
        return error_response(500, "internal", "internal server error")
