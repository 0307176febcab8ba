"""HTTP routes of the operator surface: the dashboard, the JSON API, live events, gauges.

GET    /                                dashboard (HTML)
GET    /devices/{key}                   one device: charts, errors, deploy log (HTML)
GET    /api/devices[/{key}]             fleet / one device with recent readings
DELETE /api/devices/{key}               remove a device and its data (operator token)
POST   /api/devices/{key}/cmd           pump/stop/reboot/config, waits for the ack (token)
GET    /api/telemetry                   readings: device, type, since, until, paging
GET    /api/metrics/{view}              the seed's metric views
GET    /api/errors                      ingest errors with raw payloads, paging
GET    /api/deploy-log                  the deploy log (the only one), paging
GET    /fragments/fleet|alerts|rollouts parts of the dashboard, re-fetched after changes
GET    /static/...                      dash.js and the vendored uPlot
GET    /api/rollouts                    OTA rollouts with per-wave progress
GET    /api/counters                    header counters
GET    /api/events                      server-sent events (picofleet.ops.feed)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from importlib.resources import files
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    Response,
    StreamingResponse,
)

from picofleet.core.topics import Kind
from picofleet.ops import commands, metrics, pages, queries
from picofleet.ops.feed import FEED_KEY, EventFeed, catch_up
from picofleet.ops.models import (
    Deleted,
    DeployEvent,
    DeviceDetail,
    DeviceSummary,
    ErrorRow,
    Page,
    Reading,
    Rollout,
)
from picofleet.security.limits import MAX_ROW_ID, Instant, RowId
from picofleet.web.app import HubContext
from picofleet.web.auth import require_operator

HEARTBEAT_S = 15.0
# A stream ends after this long and the browser reconnects (resuming by Last-Event-ID), so
# no response stays open forever, e.g. across a shutdown of an HTTP-only process.
MAX_STREAM_S = 300.0
RETRY_MS = 2000

router = APIRouter()
Limit = Annotated[int, Query(ge=1, le=queries.MAX_LIMIT)]


# Connection-level failures (server down, restarting, connection cut): 503, retry later.
_DB_DOWN = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
)


def hub_of(request: Request) -> HubContext:
    hub: HubContext = request.app.state.hub
    return hub


Hub = Annotated[HubContext, Depends(hub_of)]


def feed_of(hub: HubContext) -> EventFeed:
    """This process's feed, created on first use."""
    feed = hub.extra.get(FEED_KEY)
    if feed is None:
        feed = hub.extra[FEED_KEY] = EventFeed(hub.pool, local_counters=metrics.local_counters(hub))
    assert isinstance(feed, EventFeed)
    return feed


@contextlib.asynccontextmanager
async def _db(hub: HubContext) -> AsyncIterator[asyncpg.Connection]:
    """A connection; an unreachable database is a 503, not a stack trace."""
    try:
        async with hub.pool.acquire(timeout=5) as conn:
            yield conn
    except _DB_DOWN as exc:
        raise HTTPException(503, f"database unavailable: {exc}") from exc


def _next(items: list[dict[str, Any]], limit: int) -> int | None:
    return items[-1]["id"] if len(items) == limit else None


# -- dashboard -------------------------------------------------------------------------------
@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def dashboard(hub: Hub) -> HTMLResponse:
    async with _db(hub) as conn:
        html = pages.dashboard(
            devices=await queries.devices(conn),
            sparks=await queries.sparklines(conn),
            alerts=await queries.alerts(conn),
            metrics={name: await queries.metric(conn, name) for name in queries.METRIC_VIEWS},
            errors=await queries.errors(conn, limit=50),
            rollouts=await queries.rollouts(conn),
            deploys=await queries.deploy_log(conn, limit=30),
            counters=await queries.counters(conn),
            ota_enabled=await queries.table_exists(conn, "ota_rollout"),
            after=(await queries.last_ids(conn))[0],
        )
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


@router.get("/fragments/fleet", response_class=HTMLResponse, include_in_schema=False)
async def fleet_fragment(hub: Hub) -> HTMLResponse:
    async with _db(hub) as conn:
        devices, sparks = await queries.devices(conn), await queries.sparklines(conn)
    return HTMLResponse(pages.fleet_rows(devices, sparks))


@router.get("/fragments/alerts", response_class=HTMLResponse, include_in_schema=False)
async def alerts_fragment(hub: Hub) -> HTMLResponse:
    async with _db(hub) as conn:
        alerts = await queries.alerts(conn)
    return HTMLResponse(pages.alerts_panel(alerts), headers={"Cache-Control": "no-store"})


@router.get("/fragments/rollouts", response_class=HTMLResponse, include_in_schema=False)
async def rollouts_fragment(hub: Hub) -> HTMLResponse:
    async with _db(hub) as conn:
        rollouts = await queries.rollouts(conn)
    return HTMLResponse(pages.rollouts_body(rollouts), headers={"Cache-Control": "no-store"})


# The dashboard's script and the vendored uPlot (static/uplot/VENDORED.md). A fixed list, so
# a request can never name any other file.
STATIC_DIR = files("picofleet.ops") / "static"
STATIC_FILES = {
    "dash.js": "text/javascript",
    "uplot/uPlot.iife.min.js": "text/javascript",
    "uplot/uPlot.min.css": "text/css",
}


@router.get(pages.STATIC + "/{name:path}", include_in_schema=False)
async def static_asset(name: str) -> Response:
    media = STATIC_FILES.get(name)
    if media is None:
        raise HTTPException(404, "unknown asset")
    body = STATIC_DIR.joinpath(*name.split("/")).read_bytes()
    return Response(body, media_type=media, headers={"Cache-Control": "max-age=300"})


@router.get("/devices/{key}", response_class=HTMLResponse, include_in_schema=False)
async def device_page(hub: Hub, key: str) -> HTMLResponse:
    async with _db(hub) as conn:
        dev = await queries.device(conn, key)
        if dev is None:
            raise HTTPException(404, f"no device {key!r}")
        html = pages.device_page(
            dev,
            errors=await queries.errors(conn, device=key, limit=20),
            deploys=await queries.deploy_log(conn, device=key, limit=20),
            counters=await queries.counters(conn),
            after=(await queries.last_ids(conn))[0],
        )
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


@router.get("/devices/{key}/fragments/charts", response_class=HTMLResponse, include_in_schema=False)
async def charts_fragment(hub: Hub, key: str) -> HTMLResponse:
    async with _db(hub) as conn:
        dev = await queries.device(conn, key)
    if dev is None:
        raise HTTPException(404, f"no device {key!r}")
    return HTMLResponse(pages.charts(dev["series"]))


# -- JSON API --------------------------------------------------------------------------------
@router.post(
    "/api/devices/{key}/cmd",
    response_model=commands.CommandResult,
    tags=["fleet"],
    dependencies=[Depends(require_operator)],
    responses={202: {"model": commands.CommandResult}, 401: {}, 403: {}, 404: {}, 503: {}},
)
async def send_command(
    hub: Hub,
    key: str,
    body: commands.CommandRequest,
    wait: Annotated[float, Query(ge=0, le=60, description="seconds to wait for the ack")] = 10,
) -> JSONResponse:
    """Send a command; 200 with the device's ack, or 202 when it has not answered in time."""
    async with _db(hub) as conn:
        if await queries.device(conn, key, points=1) is None:
            raise HTTPException(404, f"no device {key!r}")
    if hub.bridge is None or not hub.bridge.session.connected:
        raise HTTPException(503, "this process has no broker session to send commands on")
    topics = hub.ingest.topics
    cid, sent_at = commands.new_id(), commands.now()
    hub.bridge.session.publish(topics.device(key, Kind.CMD), body.payload(cid), qos=1)
    ack = await commands.wait_ack(
        hub.pool, key, topics.device(key, Kind.STATUS), cid, sent_at, wait
    )
    result = commands.CommandResult(
        id=cid, device_key=key, cmd=body.cmd, sent_at=sent_at, acked=ack is not None, ack=ack
    )
    return JSONResponse(result.model_dump(mode="json"), status_code=200 if ack else 202)


@router.get("/api/devices", response_model=list[DeviceSummary], tags=["fleet"])
async def list_devices(hub: Hub) -> list[dict[str, Any]]:
    """Every device with its online state and latest battery / soil moisture."""
    async with _db(hub) as conn:
        return await queries.devices(conn)


@router.get("/api/devices/{key}", response_model=DeviceDetail, tags=["fleet"])
async def get_device(
    hub: Hub, key: str, points: Annotated[int, Query(ge=1, le=5000)] = 200
) -> dict[str, Any]:
    """One device, its last status, and up to ``points`` recent readings per record type."""
    async with _db(hub) as conn:
        dev = await queries.device(conn, key, points=points)
    if dev is None:
        raise HTTPException(404, f"no device {key!r}")
    return dev


@router.delete(
    "/api/devices/{key}",
    response_model=Deleted,
    tags=["fleet"],
    dependencies=[Depends(require_operator)],
    responses={401: {}, 403: {}, 404: {}, 409: {}},
)
async def delete_device(hub: Hub, key: str) -> dict[str, Any]:
    """Remove a device with everything it sent (raw records, facts, errors, deploy log)."""
    try:
        async with _db(hub) as conn:
            deleted = await queries.delete_device(conn, key)
    except asyncpg.ForeignKeyViolationError as exc:
        raise HTTPException(409, f"device {key!r} is still referenced: {exc.detail}") from exc
    if deleted is None:
        raise HTTPException(404, f"no device {key!r}")
    return deleted


@router.get("/api/telemetry", response_model=Page[Reading], tags=["data"])
async def telemetry(
    hub: Hub,
    device: str | None = None,
    type: str | None = None,
    since: Annotated[Instant | None, Query(description="record_time >= (ISO or epoch)")] = None,
    until: Annotated[Instant | None, Query(description="record_time < (ISO or epoch)")] = None,
    before_id: Annotated[
        RowId | None, Query(description="next_before_id of the page before")
    ] = None,
    limit: Limit = 100,
) -> dict[str, Any]:
    """Processed readings, newest first (by id)."""
    async with _db(hub) as conn:
        items = await queries.telemetry(
            conn,
            device=device,
            type=type,
            since=since,
            until=until,
            before_id=before_id,
            limit=limit,
        )
    return {"items": items, "next_before_id": _next(items, limit)}


@router.get("/api/metrics", tags=["data"])
async def metric_names() -> dict[str, str]:
    """The metric views by API name, with the SQL view each one reads."""
    return {name: view for name, (view, _) in queries.METRIC_VIEWS.items()}


@router.get("/api/metrics/{view}", tags=["data"])
async def metric(hub: Hub, view: str) -> list[dict[str, Any]]:
    """Rows of one metric view; ``view`` is the short name or the SQL view name."""
    name = view.removeprefix("metric_")
    if name not in queries.METRIC_VIEWS:
        raise HTTPException(404, f"unknown metric {view!r}; one of {sorted(queries.METRIC_VIEWS)}")
    async with _db(hub) as conn:
        return await queries.metric(conn, name)


@router.get("/api/errors", response_model=Page[ErrorRow], tags=["data"])
async def errors(
    hub: Hub,
    device: str | None = None,
    code: str | None = None,
    since: Instant | None = None,
    until: Instant | None = None,
    before_id: RowId | None = None,
    limit: Limit = 50,
) -> dict[str, Any]:
    """Ingest errors, newest first, with code, detail and the raw payload as text."""
    async with _db(hub) as conn:
        items = await queries.errors(
            conn,
            device=device,
            code=code,
            since=since,
            until=until,
            before_id=before_id,
            limit=limit,
        )
    return {"items": items, "next_before_id": _next(items, limit)}


@router.get("/api/deploy-log", response_model=Page[DeployEvent], tags=["ota"])
async def deploy_log(
    hub: Hub,
    device: str | None = None,
    version: str | None = None,
    before_id: RowId | None = None,
    limit: Limit = 50,
) -> dict[str, Any]:
    """Every update step of every device (OTA, USB, hub), newest first."""
    async with _db(hub) as conn:
        items = await queries.deploy_log(
            conn, device=device, version=version, before_id=before_id, limit=limit
        )
    return {"items": items, "next_before_id": _next(items, limit)}


@router.get("/api/rollouts", response_model=list[Rollout], tags=["ota"])
async def rollouts(hub: Hub, limit: Annotated[int, Query(ge=1, le=100)] = 10) -> list[Any]:
    """Recent OTA rollouts with device counts per wave and state (empty before OTA exists)."""
    async with _db(hub) as conn:
        return await queries.rollouts(conn, limit=limit)


@router.get("/api/counters", tags=["fleet"])
async def counters(hub: Hub) -> dict[str, int]:
    async with _db(hub) as conn:
        return await queries.counters(conn)


@router.get("/api/events", tags=["fleet"], response_class=StreamingResponse)
async def events(
    hub: Hub,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_ROW_ID, description="replay ingest errors after this id")
    ] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Server-sent events: ``ingest_error``, ``deploy``, ``device``, ``counters``."""
    feed = feed_of(hub)
    # A browser echoes our own ids; anything else ('²' passes isdigit() but not int(), or a
    # number past bigint) is ignored rather than failing the request or the stream.
    raw_id = last_event_id or ""
    header_id = int(raw_id) if raw_id.isascii() and raw_id.isdigit() else 0
    header_id = header_id if header_id <= MAX_ROW_ID else 0
    resume = max(after or 0, header_id)

    async def stream() -> AsyncIterator[str]:
        yield f"retry: {RETRY_MS}\n\n"
        async with feed.subscribe() as q:
            sent = 0
            if resume:
                for missed in await catch_up(hub.pool, resume):
                    yield missed.encode()
                    sent = max(sent, missed.id or 0)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + MAX_STREAM_S
            while (left := deadline - loop.time()) > 0:
                try:
                    ev = await asyncio.wait_for(q.get(), min(HEARTBEAT_S, left))
                except TimeoutError:
                    yield ": ping\n\n"
                    continue
                if ev is None:
                    return
                if ev.name == "ingest_error" and (ev.id or 0) <= sent:
                    continue  # already replayed
                yield ev.encode()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
