"""HTTP: rollups, chart data and alerts (read-only); acknowledging an alert and the per-device
pump flow rate (operator)."""

from __future__ import annotations

from typing import Annotated, Literal

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field

from picofleet.core.topics import Topics
from picofleet.security.limits import MAX_ROW_ID, Day, Instant
from picofleet.web.auth import require_operator

from . import _queries as queries
from . import _series as series
from ._models import AlertOut, DailyStat, EtlStatus, HourlyStat
from ._settings import AnalyticsSettings

router = APIRouter(prefix="/api", tags=["analytics"])

Limit = Annotated[int, Query(ge=1, le=100_000)]


def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.hub.pool
    return pool


@router.get("/stats/hourly", response_model=list[HourlyStat])
async def stats_hourly(
    request: Request,
    device: str | None = None,
    type: Annotated[str | None, Query(description="series (record type name)")] = None,
    since: Annotated[Instant | None, Query(description="default: until - 24 h")] = None,
    until: Annotated[Instant | None, Query(description="default: now")] = None,
    limit: Limit = 10_000,
) -> list[HourlyStat]:
    """Hourly rollups per device and series, oldest first."""
    return await queries.hourly(
        _pool(request), device=device, series=type, since=since, until=until, limit=limit
    )


@router.get("/stats/daily", response_model=list[DailyStat])
async def stats_daily(
    request: Request,
    device: str | None = None,
    since: Annotated[Day | None, Query(description="first day; default: until - 30 days")] = None,
    until: Annotated[Day | None, Query(description="day after the last; default: tomorrow")] = None,
    limit: Limit = 10_000,
) -> list[DailyStat]:
    """Daily pump run time, starts, watering volume, moisture and battery per device."""
    return await queries.daily(_pool(request), device=device, since=since, until=until, limit=limit)


@router.get("/stats/series", response_model=series.Chart)
async def stats_series(
    request: Request,
    range: Annotated[series.Range, Query(description="1h and 1d: raw; 7d, 30d: rollups")] = (
        series.Range.DAY
    ),
    device: Annotated[str | None, Query(description="one device; default: the fleet")] = None,
) -> series.Chart:
    """Chart data: points per device and series (gaps as null), markers, threshold lines."""
    hub = request.app.state.hub
    return await series.chart(
        _pool(request),
        range_=range,
        device=device,
        settings=AnalyticsSettings(),
        topics=Topics(hub.settings.topic_prefix),
    )


@router.get("/alerts", response_model=list[AlertOut])
async def list_alerts(
    request: Request,
    state: Literal["open", "closed"] | None = None,
    kind: str | None = None,
    device: str | None = None,
    limit: Limit = 500,
) -> list[AlertOut]:
    """Alerts, newest first."""
    return await queries.alerts(_pool(request), state=state, kind=kind, device=device, limit=limit)


@router.post(
    "/alerts/{alert_id}/ack",
    response_model=AlertOut,
    dependencies=[Depends(require_operator)],
    responses={401: {}, 403: {}, 404: {}, 409: {}},
)
async def ack_alert(
    request: Request, alert_id: Annotated[int, Path(ge=1, le=MAX_ROW_ID)]
) -> AlertOut:
    """Acknowledge an open alert (idempotent); it stays open until its condition clears."""
    alert, acked = await queries.ack(_pool(request), alert_id)
    if alert is None:
        raise HTTPException(404, f"no alert {alert_id}")
    if not acked:
        raise HTTPException(409, f"alert {alert_id} is closed")
    return alert


@router.get("/stats/etl", response_model=EtlStatus)
async def etl_status(request: Request) -> EtlStatus:
    """Where the rollup job stands: watermark, facts waiting, last run."""
    return await queries.status(_pool(request))


class Flow(BaseModel):
    l_per_min: float | None = Field(description="pump flow rate; null forgets it", gt=0)


@router.put("/stats/flow/{device_key}", dependencies=[Depends(require_operator)])
async def set_flow(request: Request, device_key: str, body: Flow) -> dict[str, object]:
    """Configure a device's pump flow rate, so daily rollups show watering volume."""
    if not await queries.set_flow(_pool(request), device_key, body.l_per_min):
        raise HTTPException(404, f"no device {device_key!r}")
    return {"device": device_key, "l_per_min": body.l_per_min}
