"""HTTP: artifacts for devices (public, content-addressed, Range) and the operator API.

GET  /ota/artifacts/{sha256}            artifact bytes; Range: bytes=N- | bytes=N-M | bytes=-N
GET  /api/ota/releases                  releases           POST (body = main.py) token
GET  /api/ota/rollouts[/{id}]           rollouts           POST (JSON)           token
POST /api/ota/rollouts/{id}/pause|resume|abort                                  token
POST /api/ota/rollback                  {"device_type"}                         token
GET  /api/ota/status[?version=]         per-rollout and per-device state
GET  /api/ota/pins   PUT|DELETE /api/ota/pins/{device_key}                      token
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from picofleet.core import logs
from picofleet.core.artifacts import ArtifactStore, CorruptArtifact
from picofleet.core.errors import Invalid, OtaError
from picofleet.core.signing import Signer, load_signer
from picofleet.ota import queries, rollouts
from picofleet.ota.config import OtaSettings
from picofleet.ota.release import create_release
from picofleet.security.limits import MAX_ROW_ID
from picofleet.web.app import HubContext
from picofleet.web.auth import require_operator

router = APIRouter()
_log = logs.get("ota.artifacts")
Operator = [Depends(require_operator)]
T = TypeVar("T")
# Ids are bigint: anything outside 1..2**63-1 is a 422 here, not an overflow in asyncpg.
RolloutId = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _hub(request: Request) -> HubContext:
    hub: HubContext = request.app.state.hub
    return hub


def _http_error(exc: OtaError) -> Exception:
    """An OTA error as its HTTP answer. ``Invalid`` keeps the shape the OpenAPI spec gives
    every 422 (a list of validation errors), so clients parse one form."""
    if isinstance(exc, Invalid):
        return RequestValidationError([{"type": "value_error", "loc": ("body",), "msg": str(exc)}])
    return HTTPException(exc.status_code, str(exc))


@asynccontextmanager
async def _unit(request: Request) -> AsyncIterator[asyncpg.Connection]:
    """One transaction; OTA errors become their HTTP status."""
    try:
        async with _hub(request).pool.acquire() as conn, conn.transaction():
            yield conn
    except OtaError as exc:
        raise _http_error(exc) from exc


async def _run(request: Request, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    async with _unit(request) as conn:
        return await op(conn)


def _signer(request: Request) -> Signer:
    try:
        return load_signer(_hub(request).settings.data_path)
    except OtaError as exc:
        raise _http_error(exc) from exc


# -- artifacts ------------------------------------------------------------------------------
def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) inclusive, or None when unsatisfiable or malformed."""
    m = _RANGE_RE.match(header.strip())
    if m is None or (not m[1] and not m[2]):
        return None
    if not m[1]:  # suffix: the last N bytes
        n = int(m[2])
        return (max(0, size - n), size - 1) if n > 0 and size > 0 else None
    first = int(m[1])
    last = int(m[2]) if m[2] else size - 1
    if first >= size or last < first:
        return None
    return first, min(last, size - 1)


# HEAD is served by the same function but left out of the schema: one route with two
# methods would give both the same operation id, which breaks /openapi.json.
@router.get("/ota/artifacts/{sha256}", tags=["ota"])
@router.head("/ota/artifacts/{sha256}", include_in_schema=False)
async def artifact(sha256: str, request: Request) -> Response:
    """Artifact bytes by sha256 (64 lowercase hex); a broken download resumes with Range.

    The bytes are hashed again on every request (an artifact is one small main.py): a file
    changed on disk is answered 500 and logged, never served."""
    store = ArtifactStore.for_settings(_hub(request).settings)
    try:
        # None for anything but 64 lowercase hex (no file system access) or no such file.
        data = await asyncio.to_thread(store.load, sha256)
    except CorruptArtifact as exc:
        _log.error("ota.artifact_corrupt", sha256=sha256, actual=exc.actual, path=str(exc.path))
        raise HTTPException(500, "artifact failed its integrity check") from None
    if data is None:
        raise HTTPException(404, "unknown artifact")
    size = len(data)
    headers = {"Accept-Ranges": "bytes", "ETag": f'"{sha256}"', "Cache-Control": "immutable"}
    rng = request.headers.get("range")
    head = request.method == "HEAD"
    if rng is None:
        headers["Content-Length"] = str(size)
        return Response(
            b"" if head else data, 200, headers=headers, media_type="application/octet-stream"
        )
    span = _byte_range(rng, size)
    if span is None:
        headers["Content-Range"] = f"bytes */{size}"
        return Response(b"", 416, headers=headers)
    first, last = span
    headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    headers["Content-Length"] = str(last - first + 1)
    body = b"" if head else data[first : last + 1]
    return Response(body, 206, headers=headers, media_type="application/octet-stream")


# -- releases -------------------------------------------------------------------------------
@router.get("/api/ota/releases", tags=["ota"])
async def list_releases(request: Request, device_type: str | None = None) -> list[dict[str, Any]]:
    return await _run(request, lambda c: queries.releases(c, device_type))


@router.post("/api/ota/releases", status_code=201, dependencies=Operator, tags=["ota"])
async def post_release(
    request: Request,
    version: Annotated[str, Query(description="MAJOR.MINOR.PATCH")],
    device_type: Annotated[str, Query()] = "pico_w",
    notes: Annotated[str, Query(max_length=2000)] = "",
) -> dict[str, Any]:
    """Body: the raw main.py (application/octet-stream)."""
    cfg = _hub(request).area(OtaSettings)
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > cfg.max_artifact_bytes:
            raise _http_error(
                Invalid(f"the file is over the limit of {cfg.max_artifact_bytes} bytes")
            )
    hub, signer = _hub(request), _signer(request)
    out = await _run(
        request,
        lambda c: create_release(
            c,
            settings=hub.settings,
            signer=signer,
            data=bytes(data),
            version=version,
            device_type=device_type,
            notes=notes,
            max_bytes=cfg.max_artifact_bytes,
            compile_timeout=cfg.compile_timeout_s,
        ),
    )
    return queries.jsonable(out)


# -- rollouts -------------------------------------------------------------------------------
class RolloutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str
    device_type: str = "pico_w"
    channel: str | None = None
    waves: list[int] | None = None
    max_failure_rate: float | None = Field(default=None, ge=0, le=1)
    min_booted: float | None = Field(default=None, ge=0, le=1)
    min_devices: int | None = Field(default=None, ge=1)
    soak_s: int | None = Field(default=None, ge=0)
    timeout_s: int | None = Field(default=None, gt=0)
    pause_between_waves: bool = False


class RollbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_type: str = "pico_w"
    timeout_s: int | None = Field(default=None, gt=0)


class PinIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str
    timeout_s: int | None = Field(default=None, gt=0)


@router.get("/api/ota/rollouts", tags=["ota"])
async def list_rollouts(
    request: Request, version: str | None = None, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[dict[str, Any]]:
    return await _run(request, lambda c: queries.rollouts(c, version=version, limit=limit))


@router.get("/api/ota/rollouts/{rollout_id}", tags=["ota"])
async def get_rollout(request: Request, rollout_id: RolloutId) -> dict[str, Any]:
    async def op(c: asyncpg.Connection) -> dict[str, Any]:
        found = await queries.rollouts(c, rollout_id=rollout_id, limit=1)
        if not found:
            raise HTTPException(404, f"no rollout {rollout_id}")
        return {
            **found[0],
            "events": await queries.rollout_events(c, rollout_id),
            "devices": await queries.devices(c, rollout_id=rollout_id),
        }

    return await _run(request, op)


@router.post("/api/ota/rollouts", status_code=201, dependencies=Operator, tags=["ota"])
async def post_rollout(request: Request, body: RolloutIn) -> dict[str, Any]:
    hub, signer = _hub(request), _signer(request)
    cfg = hub.area(OtaSettings)
    return await _run(
        request,
        lambda c: rollouts.create_rollout(
            c,
            settings=hub.settings,
            signer=signer,
            version=body.version,
            device_type=body.device_type,
            channel=body.channel,
            waves=body.waves,
            max_failure_rate=_or(body.max_failure_rate, cfg.max_failure_rate),
            min_booted=_or(body.min_booted, cfg.min_booted),
            min_devices=_or(body.min_devices, cfg.min_devices),
            soak_s=_or(body.soak_s, cfg.soak_s),
            timeout_s=_or(body.timeout_s, cfg.timeout_s),
            pause_between_waves=body.pause_between_waves,
        ),
    )


def _or(value: T | None, default: T) -> T:
    return default if value is None else value


@router.post("/api/ota/rollouts/{rollout_id}/pause", dependencies=Operator, tags=["ota"])
async def pause_rollout(request: Request, rollout_id: RolloutId) -> dict[str, Any]:
    return await _run(request, lambda c: rollouts.pause(c, rollout_id))


@router.post("/api/ota/rollouts/{rollout_id}/resume", dependencies=Operator, tags=["ota"])
async def resume_rollout(request: Request, rollout_id: RolloutId) -> dict[str, Any]:
    return await _run(request, lambda c: rollouts.resume(c, rollout_id))


@router.post("/api/ota/rollouts/{rollout_id}/abort", dependencies=Operator, tags=["ota"])
async def abort_rollout(request: Request, rollout_id: RolloutId) -> dict[str, Any]:
    return await _run(request, lambda c: rollouts.abort(c, rollout_id))


@router.post("/api/ota/rollback", status_code=201, dependencies=Operator, tags=["ota"])
async def post_rollback(request: Request, body: RollbackIn) -> dict[str, Any]:
    hub, signer = _hub(request), _signer(request)
    cfg = hub.area(OtaSettings)
    return await _run(
        request,
        lambda c: rollouts.rollback(
            c,
            settings=hub.settings,
            signer=signer,
            device_type=body.device_type,
            timeout_s=_or(body.timeout_s, cfg.timeout_s),
        ),
    )


# -- status, pins (the deploy log: GET /api/deploy-log, picofleet.ops) ---------------------
@router.get("/api/ota/status", tags=["ota"])
async def get_status(request: Request, version: str | None = None) -> dict[str, Any]:
    return await _run(request, lambda c: queries.status(c, version))


@router.get("/api/ota/pins", tags=["ota"])
async def list_pins(request: Request) -> list[dict[str, Any]]:
    return await _run(request, queries.pins)


@router.put("/api/ota/pins/{device_key}", dependencies=Operator, tags=["ota"])
async def put_pin(request: Request, device_key: str, body: PinIn) -> dict[str, Any]:
    hub, signer = _hub(request), _signer(request)
    cfg = hub.area(OtaSettings)
    return await _run(
        request,
        lambda c: rollouts.pin(
            c,
            settings=hub.settings,
            signer=signer,
            device_key=device_key,
            version=body.version,
            timeout_s=_or(body.timeout_s, cfg.timeout_s),
        ),
    )


@router.delete("/api/ota/pins/{device_key}", dependencies=Operator, tags=["ota"])
async def delete_pin(request: Request, device_key: str) -> JSONResponse:
    return JSONResponse(await _run(request, lambda c: rollouts.unpin(c, device_key)))
