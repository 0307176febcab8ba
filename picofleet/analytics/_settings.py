"""Thresholds and schedule of the analytics job (env prefix ``PICOFLEET_ANALYTICS_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AnalyticsSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PICOFLEET_ANALYTICS_", env_file=".env", extra="ignore"
    )

    enabled: bool = True
    # The hub's job: rollups, alerts, outbox, every interval_s (first run one interval after
    # start); retention at most every prune_interval_s.
    interval_s: float = Field(default=60.0, gt=0)
    prune_interval_s: float = Field(default=3600.0, gt=0)

    # Watermark safety: a fact id counts as done only once its ingest transaction started
    # more than settle_s ago. Must exceed twice the longest ingest transaction.
    settle_s: float = Field(default=60.0, ge=0)
    max_facts_per_run: int = Field(default=2_000_000, gt=0)
    # Devices per recompute statement: keeps each statement well inside the pool's timeout.
    devices_per_statement: int = Field(default=50, gt=0)
    # pump_on samples: a run lasts until the next sample, at most this long.
    pump_on_max_gap_s: int = Field(default=900, gt=0, le=86_400)

    # Retention of raw records and facts, in whole UTC days; None keeps everything.
    retention_days: int | None = Field(default=None, gt=0)

    # Alerts. "hysteresis" is how far past the threshold a value must go to close the alert.
    battery_low_pct: float = 20.0
    battery_hysteresis_pct: float = Field(default=5.0, ge=0)
    battery_lookback_h: float = Field(default=24.0, gt=0)
    soil_dry_pct: float = 15.0
    soil_dry_minutes: float = Field(default=360.0, gt=0)
    soil_hysteresis_pct: float = Field(default=5.0, ge=0)
    offline_minutes: float = Field(default=15.0, gt=0)
    auth_error_window_minutes: float = Field(default=10.0, gt=0)
    auth_error_threshold: int = Field(default=5, gt=0)
    error_rate_window_minutes: float = Field(default=10.0, gt=0)
    error_rate_max: float = Field(default=0.25, gt=0, le=1)
    error_rate_min_messages: int = Field(default=20, gt=0)
