"""Where the hub is: what ``picofleet up`` records in its data dir, read by every command.

``up`` writes ``hub.json`` (MQTT and HTTP bind/port, the public URL devices use, the topic
prefix, the PostgreSQL port, whether the database is embedded). Every other command builds
its settings from flags, then ``PICOFLEET_*``, then this record, then the defaults, so ports
given to ``up`` reach ``tail``, ``smoke``, ``simulate``, ``ota release``... A command that
needs a hub and finds none in the data dir fails naming ``--data-dir`` and creates nothing.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from picofleet.core.credentials import SECRET_FILE, FleetKeys, load_fleet_keys
from picofleet.core.files import replace_file
from picofleet.core.settings import Settings

HUB_FILE = "hub.json"
# Settings fields taken from the record (when not given by a flag or PICOFLEET_*).
RECORDED = (
    "mqtt_bind",
    "mqtt_port",
    "http_bind",
    "http_port",
    "topic_prefix",
    "public_url",
    "broker",  # with mqtt_hub_port: where operators connect on a managed Mosquitto
    "mqtt_hub_port",
    "tls",  # with mqtts_port, https and https_port: whether and where clients speak TLS
    "mqtts_port",
    "https",
    "https_port",
)
# ``up`` works its public URL out afresh at each start (the LAN address may have changed),
# runs the broker it is told to, and decides TLS and HTTPS from its own settings.
RECORDED_FOR_UP = tuple(
    f for f in RECORDED if f not in ("public_url", "broker", "mqtt_hub_port", "tls", "https")
)
_WILDCARD = ("", "0.0.0.0", "::")


class NoHub(RuntimeError):
    """The data dir holds no hub (or not the part a command needs)."""


def no_hub(settings: Settings, what: str) -> NoHub:
    return NoHub(
        f"no hub in {settings.data_path} ({what}). Pass --data-dir DIR or set "
        "PICOFLEET_DATA_DIR to the data dir of the running hub (`picofleet up` prints it), "
        "or start one there with `picofleet up`"
    )


def local_host(bind: str) -> str:
    """The address a command on this machine connects to, for a listener bound to ``bind``."""
    return "127.0.0.1" if bind in _WILDCARD else bind


def lan_address() -> str:
    """This machine's address on its default route (no packet is sent), else loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only selects the outgoing interface
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def public_url(settings: Settings) -> str:
    """Base URL devices fetch from (artifact URLs): the setting, else the address devices
    reach the HTTP listener on (``public_host``, the bind address, or the LAN address).

    Plain HTTP: OTA artifacts are public and Ed25519-signed, so devices fetch them without
    TLS; with HTTPS on, plain HTTP from the network serves nothing else (web/server.py)."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = settings.public_host or (
        lan_address() if settings.http_bind in _WILDCARD else settings.http_bind
    )
    return f"http://{host}:{settings.http_port}"


def local_http_url(settings: Settings) -> str:
    """The hub's HTTP API as a command on this machine reaches it (plain HTTP, whole, for
    loopback clients whether or not the network gets HTTPS)."""
    return f"http://{local_host(settings.http_bind)}:{settings.http_port}"


def read(data_path: Path) -> dict[str, Any] | None:
    path = data_path / HUB_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise NoHub(f"{path} is not a hub record ({exc}); remove it and restart the hub") from None
    if not isinstance(data, dict):
        raise NoHub(f"{path} is not a hub record; remove it and restart the hub")
    return data


def apply(settings: Settings, *, starting: bool = False) -> Settings:
    """``settings`` with the recorded endpoints where no flag or PICOFLEET_* gave one."""
    record = read(settings.data_path)
    if not record:
        return settings
    fields = RECORDED_FOR_UP if starting else RECORDED
    record.setdefault("tls", False)  # recorded before TLS existed: that hub spoke plain MQTT
    update = {
        f: record[f]
        for f in fields
        if record.get(f) is not None and f not in settings.model_fields_set
    }
    return settings.model_copy(update=update) if update else settings


def record(settings: Settings, *, database_url: str, http: bool) -> Path:
    """Write the running hub's endpoints (atomically: a reader never sees half a file)."""
    external = bool(settings.database_url)
    data = {
        "mqtt_bind": settings.mqtt_bind,
        "mqtt_host": local_host(settings.mqtt_bind),
        "mqtt_port": settings.mqtt_port,
        "broker": settings.broker,
        "mqtt_hub_port": settings.hub_mqtt_port,
        "tls": settings.tls,
        "mqtts_port": settings.mqtts_port,
        "https": settings.https_enabled,
        "https_port": settings.https_port,
        "http_bind": settings.http_bind,
        "http_port": settings.http_port if http else None,
        "public_url": public_url(settings) if http else None,
        "topic_prefix": settings.topic_prefix,
        "database": "external" if external else "embedded",
        "pg_port": None if external else urlsplit(database_url).port,
        "pid": os.getpid(),
        "started_at": int(time.time()),
    }
    path = settings.data_path / HUB_FILE
    replace_file(path, json.dumps(data, indent=2) + "\n", mode=0o644)
    return path


def fleet_keys(settings: Settings) -> FleetKeys:
    """The fleet's keys, never a new fleet secret."""
    if settings.provision_secret is None and not (settings.data_path / SECRET_FILE).exists():
        raise no_hub(settings, f"no {SECRET_FILE}")
    return load_fleet_keys(settings, create=False)


def database_url(settings: Settings, *, create: bool = False) -> str:
    """The hub's database: PICOFLEET_DATABASE_URL, else the embedded cluster (started if it
    is not running). Without ``create``, a data dir with no cluster is an error, not initdb."""
    if settings.database_url:
        return settings.database_url
    rec = read(settings.data_path)
    if rec is not None and rec.get("database") == "external":
        raise NoHub(
            f"the hub in {settings.data_path} uses an external database: set "
            "PICOFLEET_DATABASE_URL (or DATABASE_URL) as it has"
        )
    from picofleet.core.pgembed import EmbeddedPostgres, NoCluster

    try:
        return EmbeddedPostgres(settings.data_path, port=settings.pg_port).start(create=create)
    except NoCluster:
        raise no_hub(settings, "no embedded PostgreSQL cluster") from None
