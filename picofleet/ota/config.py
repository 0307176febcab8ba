"""OTA knobs that are not part of a rollout's own parameters.

Environment prefix ``PICOFLEET_OTA_`` (e.g. ``PICOFLEET_OTA_TICK_S=0.1`` in tests).
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MAX_ARTIFACT_BYTES = 256 * 1024  # a main.py; the Pico-W has ~850 KB of flash free


class OtaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PICOFLEET_OTA_", env_file=".env", extra="ignore")

    tick_s: float = Field(default=1.0, gt=0, le=60)
    max_artifact_bytes: int = Field(default=DEFAULT_MAX_ARTIFACT_BYTES, gt=0)
    compile_timeout_s: float = 60.0
    # Defaults of `ota rollout` options.
    max_failure_rate: float = 0.2
    min_booted: float = 0.9
    min_devices: int = 3
    soak_s: int = 300
    timeout_s: int = 1800
