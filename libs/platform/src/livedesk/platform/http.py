"""Operational HTTP routes every service serves: /healthz, /readyz, /metrics."""

from __future__ import annotations

from aiohttp import web

from livedesk.platform.health import HealthChecks
from livedesk.platform.metrics import CONTENT_TYPE_LATEST, render_metrics

__all__ = ["HEALTH_KEY", "add_ops_routes", "error_response"]

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
