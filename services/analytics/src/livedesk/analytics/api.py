"""The reports and search REST API (``/api/v1/reports/*``, ``/api/v1/search/*``).

Every route needs an access token of an ``admin`` or ``agent`` (settings
writes: ``admin`` only); visitors get 403. The tenant is always the token's
``tid``: no parameter can name another tenant. Errors leave as
``{"error": {"code", "message"}}`` (``json_errors``); bad input is a 422.
Described by ``openapi.yaml``, served at ``/api/v1/reports/openapi.yaml``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, cast

import orjson
from aiohttp import web

from livedesk.analytics import daily, reports
from livedesk.analytics.errors import StoreError
from livedesk.analytics.metrics import REPORT_SECONDS
from livedesk.analytics.search import SearchQueryError, parse_query, search_messages
from livedesk.platform.auth import Claims, TokenVerifier
from livedesk.platform.auth.http import VERIFIER_KEY, require_claims
from livedesk.platform.http import add_ops_routes, error_response, json_errors, request_context
from livedesk.platform.logging import get_logger

if TYPE_CHECKING:
    from livedesk.analytics.store import Store
    from livedesk.platform.health import HealthChecks

__all__ = ["OPENAPI_TEXT", "ApiConfig", "create_app"]

log = get_logger("livedesk.analytics.api")

OPENAPI_TEXT = resources.files("livedesk.analytics").joinpath("openapi.yaml").read_text("utf-8")

DEFAULT_RANGE = dt.timedelta(days=7)
MAX_RANGE = dt.timedelta(days=400)
_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
_HHMM = re.compile(r"^(\d{2}):(\d{2})$")


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """What the handlers need besides the request."""

    store: Store
    """Where settings are written: the store the ingester and refresher write through."""
    reads: Store
    """Where reports and search read: lanes of their own, not queued behind writes."""
    query_timeout: float
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)

    @property
    def query_settings(self) -> dict[str, Any]:
        """ClickHouse settings every report query runs with (:func:`report_query_settings`)."""
        return report_query_settings(self.query_timeout)


def report_query_settings(timeout: float) -> dict[str, Any]:
    """ClickHouse settings every report query runs with, given ``REPORT_QUERY_TIMEOUT``.

    No JIT compilation of expressions: ClickHouse compiles an expression
    on its 4th use (``min_count_to_compile_expression``), which took
    40-110 ms of one report call per query shape in each process, and the
    compiled code made no measurable difference to these queries (few
    rows each; docs/benchmarks/analytics.md).
    """
    return {
        "max_execution_time": max(1, round(timeout)),
        "compile_expressions": 0,
        "compile_aggregate_expressions": 0,
        "compile_sort_description": 0,
    }


CONFIG_KEY = web.AppKey("analytics_api", ApiConfig)


class InputError(Exception):
    """A request parameter is invalid; becomes a 422."""


def _claims(request: web.Request, *roles: Any) -> Claims:
    return require_claims(request, *(roles or ("admin", "agent")))


def _time(request: web.Request, name: str) -> dt.datetime | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = dt.datetime.fromisoformat(raw.replace(" ", "+"))
    except ValueError:
        raise InputError(f"{name} must be an RFC 3339 date-time") from None
    if value.tzinfo is None:
        raise InputError(f"{name} must carry a time zone offset (e.g. Z)")
    return value.astimezone(dt.UTC)


def _id(request: web.Request, name: str) -> str:
    value = request.query.get(name, "")
    if value and not _ID.match(value):
        raise InputError(f"{name} is not a valid id")
    return value


def _range(request: web.Request, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    end = _time(request, "to") or now
    start = _time(request, "from") or end - DEFAULT_RANGE
    if start >= end:
        raise InputError("from must be before to")
    if end - start > MAX_RANGE:
        raise InputError(f"the range may span {MAX_RANGE.days} days at most")
    return start, end


def _filter(request: web.Request, claims: Claims, config: ApiConfig) -> reports.ReportFilter:
    start, end = _range(request, config.clock())
    return reports.ReportFilter(
        tenant_id=claims.tenant_id,
        start=start,
        end=end,
        inbox_id=_id(request, "inbox_id"),
        team_id=_id(request, "team_id"),
        agent_id=_id(request, "agent_id"),
    )


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = "" if value is None else value
    return flat


def _csv(rows: list[dict[str, Any]], filename: str) -> web.Response:
    flat = [_flatten(r) for r in rows]
    columns: list[str] = list(dict.fromkeys(k for r in flat for k in r))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(flat)
    response = web.Response(text=out.getvalue(), content_type="text/csv", charset="utf-8")
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}.csv"'
    return response


def _wants_csv(request: web.Request) -> bool:
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise InputError("format must be json or csv")
    return fmt == "csv"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _endpoint(name: str) -> Callable[[Handler], Handler]:
    """Time the handler and turn input and store errors into API errors."""

    def wrap(handler: Handler) -> Handler:
        async def run(request: web.Request) -> web.StreamResponse:
            start = time.perf_counter()
            try:
                return await handler(request)
            except (InputError, SearchQueryError) as exc:
                return error_response(422, "validation_error", str(exc))
            except StoreError as exc:
                log.warning("report_failed", report=name, error=str(exc)[:2000])
                if "TIMEOUT_EXCEEDED" in str(exc) or "Timeout exceeded" in str(exc):
                    return error_response(504, "timeout", "the report took too long")
                return error_response(503, "unavailable", "the analytics store failed")
            finally:
                REPORT_SECONDS.labels(name).observe(time.perf_counter() - start)

        return run

    return wrap


def _report_meta(flt: reports.ReportFilter) -> dict[str, Any]:
    return {
        "from": _iso(flt.start),
        "to": _iso(flt.end),
        "filters": {"inbox_id": flt.inbox_id, "team_id": flt.team_id, "agent_id": flt.agent_id},
    }


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


@_endpoint("overview")
async def get_overview(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/reports/overview."""
    claims = _claims(request)
    config = request.app[CONFIG_KEY]
    flt = _filter(request, claims, config)
    as_csv = _wants_csv(request)
    metrics = await reports.overview(config.reads, flt, config.query_settings)
    if as_csv:
        return _csv([metrics], "overview")
    return _json({**_report_meta(flt), **metrics})


def _breakdown_handler(by: reports.GroupBy, name: str) -> Handler:
    @_endpoint(name)
    async def handler(request: web.Request) -> web.StreamResponse:
        claims = _claims(request)
        config = request.app[CONFIG_KEY]
        flt = _filter(request, claims, config)
        as_csv = _wants_csv(request)
        rows = await reports.breakdown(config.reads, flt, by, config.query_settings)
        if as_csv:
            return _csv(rows, name)
        return _json({**_report_meta(flt), "rows": rows})

    return handler


@_endpoint("volume")
async def get_volume(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/reports/volume?interval=hour|day|week."""
    claims = _claims(request)
    config = request.app[CONFIG_KEY]
    flt = _filter(request, claims, config)
    interval = request.query.get("interval", "day")
    if interval not in ("hour", "day", "week"):
        raise InputError("interval must be hour, day or week")
    limits = {"hour": 24 * 31, "day": 400, "week": 60}
    buckets = (flt.end - flt.start) / {
        "hour": dt.timedelta(hours=1),
        "day": dt.timedelta(days=1),
        "week": dt.timedelta(weeks=1),
    }[interval]
    if buckets > limits[interval]:
        raise InputError(f"at most {limits[interval]} {interval} buckets per request")
    as_csv = _wants_csv(request)
    body = await reports.volume(
        config.reads, flt, cast("reports.Interval", interval), config.query_settings
    )
    if as_csv:
        return _csv(body["series"], "volume")
    return _json({**_report_meta(flt), **body})


@_endpoint("heatmap")
async def get_heatmap(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/reports/heatmap: conversations created per weekday and hour."""
    claims = _claims(request)
    config = request.app[CONFIG_KEY]
    flt = _filter(request, claims, config)
    as_csv = _wants_csv(request)
    body = await reports.heatmap(config.reads, flt, config.query_settings)
    if as_csv:
        return _csv(body["cells"], "heatmap")
    return _json({**_report_meta(flt), **body})


@_endpoint("live")
async def get_live(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/reports/live: waiting now, longest wait, agents online."""
    claims = _claims(request)
    config = request.app[CONFIG_KEY]
    body = await reports.live(
        config.reads,
        claims.tenant_id,
        config.clock(),
        inbox_id=_id(request, "inbox_id"),
        team_id=_id(request, "team_id"),
        settings=config.query_settings,
    )
    return _json(body)


@_endpoint("search")
async def get_search(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/search/messages?q=..."""
    claims = _claims(request)
    config = request.app[CONFIG_KEY]
    query = parse_query(request.query.get("q", ""))
    try:
        limit = int(request.query.get("limit", "20"))
    except ValueError:
        raise InputError("limit must be an integer") from None
    if not 1 <= limit <= 100:
        raise InputError("limit must be between 1 and 100")
    status = request.query.get("status", "")
    if status not in ("", "queued", "assigned", "resolved"):
        raise InputError("status must be queued, assigned or resolved")
    start, end = _time(request, "from"), _time(request, "to")
    if start and end and start >= end:
        raise InputError("from must be before to")
    body = await search_messages(
        config.reads,
        tenant_id=claims.tenant_id,
        query=query,
        start=start,
        end=end,
        inbox_id=_id(request, "inbox_id"),
        agent_id=_id(request, "agent_id"),
        status=status,
        limit=limit,
        cursor=request.query.get("cursor") or None,
        settings=config.query_settings,
    )
    return _json(body)


@_endpoint("settings")
async def get_settings(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/reports/settings: the tenant's time zone."""
    claims = _claims(request)
    zone = await reports.tenant_time_zone(request.app[CONFIG_KEY].reads, claims.tenant_id)
    return _json({"time_zone": zone})


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(reason="expected application/json")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise web.HTTPBadRequest(reason="body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InputError("body must be a JSON object")
    return cast("dict[str, Any]", body)


def _zone(body: dict[str, Any]) -> str:
    zone = body.get("time_zone")
    if not isinstance(zone, str) or not reports.valid_time_zone(zone):
        raise InputError("time_zone must be an IANA time zone name, e.g. Europe/Paris")
    return zone


@_endpoint("settings")
async def put_settings(request: web.Request) -> web.StreamResponse:
    """PUT /api/v1/reports/settings (admin): set the tenant's time zone."""
    claims = _claims(request, "admin")
    body = await _json_body(request)
    zone = _zone(body)
    await request.app[CONFIG_KEY].store.insert(
        "tenant_settings",
        [(claims.tenant_id, zone, time.time_ns())],
        ("tenant_id", "time_zone", "version"),
    )
    return _json({"time_zone": zone})


def _minute(value: Any, name: str) -> int:
    match = _HHMM.match(value) if isinstance(value, str) else None
    if match is None:
        raise InputError(f"{name} must be HH:MM")
    hours, minutes = int(match.group(1)), int(match.group(2))
    if minutes > 59 or hours * 60 + minutes > 24 * 60:
        raise InputError(f"{name} must be between 00:00 and 24:00")
    return hours * 60 + minutes


def parse_windows(raw: Any) -> list[tuple[int, int]]:
    """Weekly windows ``[{"weekday": 1..7, "start": "HH:MM", "end": "HH:MM"}]`` as
    sorted, non-overlapping ``[start, end)`` seconds after Monday 00:00."""
    if not isinstance(raw, list) or len(raw) > 50:
        raise InputError("windows must be a list of at most 50 windows")
    windows: list[tuple[int, int]] = []
    for item in raw:
        if not isinstance(item, dict):
            raise InputError("each window is an object")
        weekday = item.get("weekday")
        if not isinstance(weekday, int) or isinstance(weekday, bool) or not 1 <= weekday <= 7:
            raise InputError("weekday must be 1 (Monday) to 7 (Sunday)")
        start, end = _minute(item.get("start"), "start"), _minute(item.get("end"), "end")
        if start >= end:
            raise InputError("a window's start must be before its end")
        base = (weekday - 1) * 86400
        windows.append((base + start * 60, base + end * 60))
    windows.sort()
    for (_, end), (start, _) in itertools.pairwise(windows):
        if start < end:
            raise InputError("windows must not overlap")
    return windows


def _hours_body(hours: reports.BusinessHours) -> dict[str, Any]:
    def hhmm(seconds: int) -> str:
        return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"

    return {
        "inbox_id": hours.inbox_id,
        "time_zone": hours.time_zone,
        "windows": [
            {
                "weekday": s // 86400 + 1,
                "start": hhmm(s % 86400),
                "end": hhmm(e - s // 86400 * 86400),
            }
            for s, e in hours.windows
        ],
    }


@_endpoint("settings")
async def get_business_hours(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/reports/settings/business-hours: every inbox's business hours."""
    claims = _claims(request)
    hours = await reports.business_hours(request.app[CONFIG_KEY].reads, claims.tenant_id)
    return _json({"inboxes": [_hours_body(h) for h in hours]})


def _inbox(request: web.Request) -> str:
    inbox = request.match_info["inbox_id"]
    if not _ID.match(inbox):
        raise InputError("inbox_id is not a valid id")
    return inbox


@_endpoint("settings")
async def put_business_hours(request: web.Request) -> web.StreamResponse:
    """PUT /api/v1/reports/settings/business-hours/{inbox_id} (admin)."""
    claims = _claims(request, "admin")
    inbox = _inbox(request)
    body = await _json_body(request)
    zone = _zone(body)
    windows = parse_windows(body.get("windows"))
    store = request.app[CONFIG_KEY].store
    await daily.mark_hours_changed(store, claims.tenant_id, inbox)
    await store.insert(
        "inbox_business_hours",
        [
            (
                claims.tenant_id,
                inbox,
                zone,
                [s for s, _ in windows],
                [e for _, e in windows],
                1,
                time.time_ns(),
            )
        ],
        ("tenant_id", "inbox_id", "time_zone", "starts", "ends", "enabled", "version"),
    )
    # Pre-aggregates hold the inbox's business seconds under the old hours (daily.py).
    await daily.mark_hours_changed(store, claims.tenant_id, inbox)
    await _write_hours_fix(store, claims.tenant_id)
    return _json(_hours_body(reports.BusinessHours(inbox, zone, tuple(windows))))


@_endpoint("settings")
async def delete_business_hours(request: web.Request) -> web.StreamResponse:
    """DELETE /api/v1/reports/settings/business-hours/{inbox_id} (admin)."""
    claims = _claims(request, "admin")
    inbox = _inbox(request)
    store = request.app[CONFIG_KEY].store
    await daily.mark_hours_changed(store, claims.tenant_id, inbox)
    await store.insert(
        "inbox_business_hours",
        [(claims.tenant_id, inbox, "UTC", [], [], 0, time.time_ns())],
        ("tenant_id", "inbox_id", "time_zone", "starts", "ends", "enabled", "version"),
    )
    await daily.mark_hours_changed(store, claims.tenant_id, inbox)
    await _write_hours_fix(store, claims.tenant_id)
    return web.Response(status=204)


async def _write_hours_fix(store: Store, tenant_id: str) -> None:
    """The new business seconds of the pre-aggregates, at once (reports are exact without)."""
    try:
        await daily.write_hours_fix(store, tenant_id)
    except Exception as exc:  # reports derive them from the items meanwhile
        log.warning("report_hours_fix_failed", tenant_id=tenant_id, error=repr(exc))


async def get_openapi(_: web.Request) -> web.Response:
    """GET /api/v1/reports/openapi.yaml: the document describing this API."""
    return web.Response(text=OPENAPI_TEXT, content_type="application/yaml")


def create_app(
    store: Store,
    health: HealthChecks,
    verifier: TokenVerifier,
    *,
    reads: Store | None = None,
    query_timeout: float = 30.0,
    clock: Callable[[], dt.datetime] | None = None,
) -> web.Application:
    """The analytics HTTP application: reports, search, settings and the ops routes.

    Reports and search read through ``reads`` (default: ``store``).
    """
    app = web.Application(middlewares=[request_context, json_errors])
    app[VERIFIER_KEY] = verifier
    config = ApiConfig(store, reads or store, query_timeout)
    if clock is not None:
        config = ApiConfig(store, reads or store, query_timeout, clock)
    app[CONFIG_KEY] = config
    add_ops_routes(app, health)
    r = app.router
    r.add_get("/api/v1/reports/overview", get_overview)
    r.add_get("/api/v1/reports/volume", get_volume)
    r.add_get("/api/v1/reports/agents", _breakdown_handler("agent", "agents"))
    r.add_get("/api/v1/reports/inboxes", _breakdown_handler("inbox", "inboxes"))
    r.add_get("/api/v1/reports/teams", _breakdown_handler("team", "teams"))
    r.add_get("/api/v1/reports/heatmap", get_heatmap)
    r.add_get("/api/v1/reports/live", get_live)
    r.add_get("/api/v1/reports/settings", get_settings)
    r.add_put("/api/v1/reports/settings", put_settings)
    r.add_get("/api/v1/reports/settings/business-hours", get_business_hours)
    r.add_put("/api/v1/reports/settings/business-hours/{inbox_id}", put_business_hours)
    r.add_delete("/api/v1/reports/settings/business-hours/{inbox_id}", delete_business_hours)
    r.add_get("/api/v1/reports/openapi.yaml", get_openapi)
    r.add_get("/api/v1/search/messages", get_search)
    return app
