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
    # TLS (picofleet/core/tls.py). Devices' MQTT over TLS on mqtts_port; plain mqtt_port
    # listens on loopback only unless mqtt_plain_open (legacy senders; a warning at start).
    tls: bool = True
    mqtts_port: int = 8883
    mqtt_plain_open: bool = False
    # Names and addresses in the server certificate [hostname, localhost, 127.0.0.1, LAN
    # address, public_host]. Bring your own: tls_cert + tls_key (tls_ca: the CA that signed
    # it); tls_ca alone: the CA a client trusts for a hub elsewhere.
    tls_hosts: list[str] | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    # HTTPS for the API and dashboard on https_port, on http_bind [on when http_bind is not
    # loopback]; plain HTTP on http_port then serves only OTA artifacts and /health to other
    # addresses (the whole API to loopback), unless http_plain_open (legacy senders).
    https: bool | None = None
    https_port: int = 8443
    http_plain_open: bool = False
    http_bind: str = "0.0.0.0"
    http_port: int = 8000
    # A request's headers must be complete this long after the connection opens (or after
    # the previous response); slower clients are dropped (slowloris).
    http_header_timeout_s: float = Field(default=10.0, gt=0)
    # A hub process without the http role (`serve bridge`) serves /metrics and /health on
    # this port for Prometheus [none]; the http role's /metrics is on http_port.
    metrics_port: int | None = None
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
    # The ledger's day partitions (sql/0080): the hub keeps this many days ahead of today,
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

    # Home Assistant MQTT discovery (picofleet/homeassistant): off until the operator opts in;
    # then the hub publishes retained entity configs under ha_discovery_prefix and each
    # sensor's latest value, checking for new facts every ha_poll_s.
    ha_discovery: bool = False
    ha_discovery_prefix: str = "homeassistant"
    ha_poll_s: float = Field(default=2.0, gt=0)

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

    @field_validator("topic_prefix", "ha_discovery_prefix")
    @classmethod
    def _clean_prefix(cls, v: str) -> str:
        v = v.strip("/")
        if not v or any(c in v for c in "+#"):
            raise ValueError("a topic prefix must be non-empty and without wildcards")
        return v

    @property
    def hub_mqtt_port(self) -> int:
        """The port the hub and operators use on this host's broker."""
        if self.broker != "mosquitto":
            return self.mqtt_port
        return self.mqtt_hub_port or self.mqtt_port + 1

    @property
    def mqtt_plain_bind(self) -> str:
        """Where plain MQTT listens: loopback, unless opened on purpose for legacy senders."""
        return self.mqtt_bind if self.mqtt_plain_open or not self.tls else "127.0.0.1"

    @property
    def https_enabled(self) -> bool:
        if self.https is not None:
            return self.https
        return self.http_bind not in ("127.0.0.1", "localhost", "::1")

    @property
    def data_path(self) -> Path:
        return self.data_dir.expanduser().resolve()


_TLS_SCHEMES = ("mqtts", "ssl")


def mqtt_endpoint(url: str) -> tuple[str, int]:
    """Host and port of an ``mqtt://host:port`` or ``mqtts://host:port`` URL (credentials in
    the URL are ignored)."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "tcp", *_TLS_SCHEMES):
        raise ValueError(
            f"unsupported MQTT URL scheme {parts.scheme!r}; use mqtt:// or mqtts://host:port"
        )
    tls = parts.scheme in _TLS_SCHEMES
    return parts.hostname or "127.0.0.1", parts.port or (8883 if tls else 1883)


def mqtt_url_tls(url: str) -> bool:
    """Whether an MQTT URL asks for TLS (``mqtts://``)."""
    return url.split("://", 1)[0] in _TLS_SCHEMES if "://" in url else False
