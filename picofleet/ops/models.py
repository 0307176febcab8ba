"""Response models of the operator API (they are what /docs shows)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

T = TypeVar("T")


class DeviceSummary(BaseModel):
    id: int
    device_key: str
    serial: str | None
    device_type: str | None  # None until the device declares it (startup, USB flash)
    channel: str
    firmware: str | None
    state: str | None
    blocked: bool
    online: bool
    first_seen: datetime
    last_seen: datetime
    provisioned_at: datetime | None
    battery_pct: float | None
    battery_at: datetime | None
    moisture_pct: float | None
    moisture_at: datetime | None
    pump_on: float | None  # the latest pump_on reading: 1 on, 0 off
    pump_at: datetime | None


class Series(BaseModel):
    """Recent readings of one record type, oldest first."""

    type: str
    unit: str
    points: list[tuple[datetime, float]]


class DeviceDetail(DeviceSummary):
    status: dict[str, Any] | None
    series: list[Series]


class Reading(BaseModel):
    id: int
    device_key: str
    type: str
    unit: str
    record_time: datetime
    value: float
    seq: int | None
    raw_id: int
    ingested_at: datetime


class ErrorRow(BaseModel):
    id: int
    raw_id: int
    item_idx: int
    code: str
    detail: str
    created_at: datetime
    topic: str
    device_key: str | None
    source: str
    payload: str
    payload_size: int
    payload_truncated: bool


class DeployEvent(BaseModel):
    id: int
    device_key: str
    version: str | None
    state: str
    reason: str | None
    source: str
    seq: int | None
    detail: dict[str, Any]
    raw_id: int | None
    created_at: datetime


class Page(BaseModel, Generic[T]):
    """One page, newest first; pass ``next_before_id`` as ``before_id`` for the next one."""

    items: list[T]
    next_before_id: int | None


class Wave(BaseModel):
    wave: str
    states: dict[str, int]
    total: int


class Rollout(BaseModel):
    """A rollout as the OTA tables hold it (columns passed through), with per-wave counts."""

    rollout: dict[str, Any]
    waves: list[Wave]


class Deleted(BaseModel):
    device_key: str
    devices: int
    raw_records: int
    facts: int
    deploy_events: int
