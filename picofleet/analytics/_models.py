"""What the analytics area shows: one model per row kind, for the API, the CLI and MQTT."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel


class HourlyStat(BaseModel):
    device: str
    series: str
    hour: datetime
    n: int
    min: float
    max: float
    avg: float
    sum: float
    first_time: datetime
    last_time: datetime


class DailyStat(BaseModel):
    device: str
    day: date
    pump_runtime_s: float | None
    pump_starts: float | None
    pump_source: str | None
    watering_l: float | None
    moisture_min: float | None
    moisture_avg: float | None
    battery_min: float | None


class AlertOut(BaseModel):
    """An alert as the API lists it and as {prefix}/alerts/{kind} announces it."""

    id: int
    kind: str
    subject: str
    device: str | None
    state: Literal["open", "closed"]
    opened_at: datetime
    closed_at: datetime | None
    acked_at: datetime | None = None  # an operator acknowledged it (it stays open)
    detail: dict[str, Any]


class EtlStatus(BaseModel):
    last_id: int
    pending_facts: int
    last_run_at: datetime | None
    last_run_ms: float | None
    last_run_facts: int | None
    pruned_before: datetime | None
    hourly_rows: int
    daily_rows: int
    open_alerts: int
