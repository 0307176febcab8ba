"""One settings class for every hub role.

Values come from the process environment (prefix ``PICOFLEET_``), a ``.env`` file, then the
defaults below. Secrets are ``SecretStr`` so they never appear in a repr or a log line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Largest MQTT packet a broker accepts, counted as Mosquitto counts for max_packet_size
# (remaining length + 1); a client announcing more is disconnected before its body is read.
MQTT_MAX_PACKET_BYTES = 1024 * 1024

_PLACEHOLDERS = {"changeme", "change-me", "secret", "password", "xxx"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PICOFLEET_",
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
    )

    data_dir: Path = Path("./picofleet-data")
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("PICOFLEET_DATABASE_URL", "DATABASE_URL", "database_url"),
    )
    mqtt_url: str | None = None
    broker: Literal["amqtt", "mosquitto"] = "amqtt"
    mqtt_bind: str = "0.0.0.0"
    mqtt_port: int = 1883
    # Mosquitto only: the listener for the hub and operators, which devices cannot log in to
    # (devices use mqtt_port, where the client id is the username). None: mqtt_port + 1.
    mqtt_hub_port: int | None = None
    http_bind: str = "0.0.0.0"
    http_port: int = 8000
    # A request's headers must be complete this long after the connection opens (or after
    # the previous response); slower clients are dropped (slowloris).
    http_header_timeout_s: float = Field(default=10.0, gt=0)
    public_host: str | None = None
    # Base URL devices fetch artifacts from [http://<public_host or LAN address>:<http_port>].
    public_url: str | None = None
    # Embedded PostgreSQL's port [chosen free once, then kept in the data dir].
    pg_port: int | None = None
    topic_prefix: str = "picofleet"

    provision_secret: SecretStr | None = None
    legacy_token_enabled: bool = True
    token_window_s: int = 300
    max_clock_drift_s: int = 3600
    # Copies of a message with neither device time nor seq within this window are one.
    untimed_dedupe_window_s: int = 300
    # Anonymous senders (plain POST /ingest; picofleet/ingest through Mosquitto) may write
    # legacy numeric devices, as the older senders always did. Off: credentials required.
    ingest_anonymous_legacy: bool = True
    # The ledger's day partitions (sql/0070): the hub keeps this many days ahead of today,
    # checking every interval (a row of a day without its partition waits in the default one).
    ledger_partition_ahead_days: int = Field(default=7, ge=1, le=366)
    ledger_partition_interval_s: float = Field(default=3600.0, gt=0)

    max_payload_bytes: int = 256 * 1024
    mqtt_max_packet_bytes: int = Field(default=MQTT_MAX_PACKET_BYTES, ge=20)
    max_items_per_message: int = 1000
    stored_payload_bytes: int = 64 * 1024
    batch_max_messages: int = 1000
    batch_max_age_ms: int = 20
    buffer_max_messages: int = 20000
    bridge_client_id: str = "picofleet-bridge"
    shared_subscription: str | None = None
    mqtt_keepalive_s: int = 30
    # The hub's supervisor gives a task up (and the hub exits non-zero) past this many
    # failures within the window; until then it restarts it with backoff.
    task_max_failures: int = 5
    task_failure_window_s: float = 300.0

    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator("provision_secret")
    @classmethod
    def _refuse_placeholder(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None:
            return v
        raw = v.get_secret_value()
        if raw.lower() in _PLACEHOLDERS or len(raw) < 16:
            raise ValueError(
                "provision_secret must be at least 16 characters and not a placeholder"
            )
        return v

    @field_validator("topic_prefix")
    @classmethod
    def _clean_prefix(cls, v: str) -> str:
        v = v.strip("/")
        if not v or any(c in v for c in "+#"):
            raise ValueError("topic_prefix must be a non-empty topic level without wildcards")
        return v

    @property
    def hub_mqtt_port(self) -> int:
        """The port the hub and operators use on this host's broker."""
        if self.broker != "mosquitto":
            return self.mqtt_port
        return self.mqtt_hub_port or self.mqtt_port + 1

    @property
    def data_path(self) -> Path:
        return self.data_dir.expanduser().resolve()


def mqtt_endpoint(url: str) -> tuple[str, int]:
    """Host and port of an ``mqtt://host:port`` URL (credentials in the URL are ignored)."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "tcp"):
        raise ValueError(f"unsupported MQTT URL scheme {parts.scheme!r}; use mqtt://host:port")
    return parts.hostname or "127.0.0.1", parts.port or 1883
