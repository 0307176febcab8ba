"""FastAPI application factory. Routes get the hub's state from ``app.state.hub``."""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from pydantic_settings import BaseSettings

import picofleet
from picofleet.bridge.decode import Message, parse_json
from picofleet.bridge.ledger import Stored, first_error, status_of
from picofleet.bridge.service import Bridge, Ingest, is_outage, publish_rejections
from picofleet.core.buildinfo import build_info
from picofleet.core.codes import Code
from picofleet.core.credentials import HUB_USER, FleetKeys
from picofleet.core.settings import Settings
from picofleet.core.supervise import Supervisor
from picofleet.core.topics import valid_device_key
from picofleet.security.limits import BodySizeLimit, RefuseNul, body_limit
from picofleet.web.docs import install_docs
from picofleet.web.metrics import MetricSource
from picofleet.web.metrics import install as install_metrics

AreaSettings = TypeVar("AreaSettings", bound=BaseSettings)


@dataclass
class HubContext:
    """What every area gets from the running hub."""

    settings: Settings
    pool: asyncpg.Pool
    ingest: Ingest
    keys: FleetKeys
    bridge: Bridge | None = None
    supervisor: Supervisor | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Each area's own settings class (OtaSettings, UsbSettings, ...), built once per hub;
    # the assembly may seed one (``picofleet up --usb-gateway``).
    areas: dict[type[BaseSettings], BaseSettings] = field(default_factory=dict)

    def area(self, cls: type[AreaSettings]) -> AreaSettings:
        found = self.areas.get(cls)
        if found is None:
            found = self.areas[cls] = cls()
        assert isinstance(found, cls)
        return found


class IngestResult(BaseModel):
    raw_id: int
    processed_id: int | None
    status: str
    # The rejection's code (picofleet/core/codes.py) and why, as stored in ingest_error; else null.
    code: str | None = None
    detail: str | None = None


def ingest_result(w: Stored) -> dict[str, Any]:
    error = first_error(w)
    return IngestResult(
        raw_id=w.raw_id,
        processed_id=w.processed_ids[0] if w.processed_ids else None,
        status=status_of(w),
        code=None if error is None else error.code.value,
        detail=None if error is None else error.detail,
    ).model_dump()


def ingest_sender(authorization: str | None, keys: FleetKeys) -> tuple[str | None, bool]:
    """Who posts to /ingest: (None, True) when anonymous; (user, ok) for HTTP Basic
    credentials, which are the sender's MQTT login (device key and derived password)."""
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return None, True  # no credentials (or another scheme): the older senders' contract
    try:
        user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None, False
    if not (valid_device_key(user) or user == HUB_USER):
        return None, False
    return user, keys.check_password(user, password)


def create_app(
    hub: HubContext,
    routers: Sequence[APIRouter] = (),
    metric_sources: Sequence[MetricSource] = (),
) -> FastAPI:
    """The hub's own routes (ingest, health, readiness, metrics, docs) and the areas'
    ``routers`` and ``metric_sources``, which the assembly (picofleet/hub.py) passes in."""
    app = FastAPI(
        title="picofleet hub", version=picofleet.__version__, docs_url=None, redoc_url=None
    )
    install_docs(app)
    app.state.hub = hub
    # The outer bound on any request body, before a route buffers it; routes check finer ones.
    app.add_middleware(BodySizeLimit, max_bytes=body_limit(hub.settings))
    app.add_middleware(RefuseNul)

    @app.get("/health")
    async def health() -> dict[str, str]:
        info = build_info()
        return {"status": "ok", "version": info.version, "commit": info.commit}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        checks: dict[str, bool] = {}
        try:
            async with hub.pool.acquire(timeout=2) as conn:
                await conn.fetchval("SELECT 1")
            checks["database"] = hub.ingest.db_ok or hub.bridge is None
        except Exception:
            checks["database"] = False
        if hub.bridge is not None:
            checks["broker"] = hub.bridge.session.connected
        answer: dict[str, Any] = {"checks": checks}
        if hub.supervisor is not None:
            checks["tasks"] = hub.supervisor.all_up
            answer["tasks_down"] = hub.supervisor.down()
        ok = all(checks.values())
        return JSONResponse({"ready": ok, **answer}, status_code=200 if ok else 503)

    @app.post("/ingest", response_model=list[IngestResult])
    async def ingest(request: Request) -> JSONResponse:
        raw = await request.body()
        ing = hub.ingest
        now = time.time()
        topic = ing.topics.ingest
        body: Any = None
        if len(raw) <= hub.settings.max_payload_bytes:
            try:
                body, _ = parse_json(raw)
            except ValueError:
                body = None
        dec = ing.decoder
        sender, trusted = ingest_sender(request.headers.get("authorization"), hub.keys)
        await ing.refresh_record_types()
        msgs: list[Message]
        if isinstance(body, list) and 0 < len(body) <= hub.settings.max_items_per_message:
            msgs = [
                dec.decode_value(topic, item, received_at=now, source="http", sender=sender)
                for item in body
            ]
        else:
            msgs = [dec.decode(topic, raw, received_at=now, source="http", sender=sender)]
        if not trusted:
            why = "the sender's credentials do not match"
            msgs = [m.refused(Code.SENDER_NOT_AUTHORIZED, why) for m in msgs]
        ing.metrics.received_by["http"] += len(msgs)
        try:
            stored = await ing.store(msgs)
        except Exception as exc:
            if not is_outage(exc):
                raise
            # The sender retries later, as a device would; what this attempt may have
            # stored already is deduplicated then.
            return JSONResponse(
                {"detail": "database unavailable"}, status_code=503, headers={"Retry-After": "5"}
            )
        if hub.bridge is not None:  # the hub's own MQTT session (none in an http-only role)
            publish_rejections(hub.bridge.session, ing.topics, stored)
        return JSONResponse([ingest_result(w) for w in stored])

    install_metrics(app, hub, metric_sources)

    for router in routers:
        app.include_router(router)
    return app
