"""``picofleet smoke``: a post-deploy test of a running hub, end to end, then clean-up.

    health     GET /health answers (waits up to --wait seconds for a restarting hub)
    ready      GET /ready: database and broker connected
    mqtt       a throwaway device (smoke-<random>) connects with its derived credentials
    telemetry  its reading, published over MQTT, is served back from PostgreSQL by the API
    error      an invalid message from it lands as an ingest error (invalid_json)
    cleanup    DELETE /api/devices/{key} with the operator token removes all of it

Stdlib HTTP only (this runs on a freshly deployed Pi). Each failed step is named with what
was expected; the exit code is 1 when any step failed.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from picofleet.core.credentials import FleetKeys
from picofleet.core.mqttclient import ConnectFailed, MqttSession, MqttTarget
from picofleet.core.topics import Kind, Topics
from picofleet.ops.api import HubApi

SMOKE_PREFIX = "smoke-"
SMOKE_VALUE = 42.5
SMOKE_TYPE = "soil_moisture_pct"
INVALID_PAYLOAD = b"smoke: this is not JSON {"
INVALID_CODE = "invalid_json"


@dataclass
class Step:
    name: str
    ok: bool | None  # None: skipped
    detail: str

    def line(self) -> str:
        status = "skip" if self.ok is None else "ok" if self.ok else "FAIL"
        return f"{status:<5} {self.name:<10} {self.detail}"


@dataclass
class Smoke:
    """Args:
    http: the hub's base URL.
    mqtt_host, mqtt_port: the broker devices use.
    mqtt_ca, http_ca: the hub's CA, when its MQTT or HTTP speaks TLS.
    keys: the fleet's keys (device password, operator token).
    topics: the topic contract of the hub's prefix.
    device_key: default ``smoke-<8 hex>``.
    timeout: seconds each step may wait for the data to show up.
    wait: seconds /health may take to come up (a hub just restarted).
    """

    http: str
    mqtt_host: str
    mqtt_port: int
    keys: FleetKeys
    topics: Topics
    device_key: str = field(default_factory=lambda: SMOKE_PREFIX + secrets.token_hex(4))
    timeout: float = 15.0
    wait: float = 0.0
    steps: list[Step] = field(default_factory=list)
    mqtt_ca: Path | None = None
    http_ca: Path | None = None

    def __post_init__(self) -> None:
        self.http = self.http.rstrip("/")

    # -- HTTP ----------------------------------------------------------------------------------
    def _call(self, method: str, path: str, *, token: str | None = None) -> tuple[int, Any]:
        return HubApi(self.http, token, ca=self.http_ca).call(method, path, auth=token is not None)

    def _record(self, name: str, ok: bool | None, detail: str) -> bool:
        self.steps.append(Step(name, ok, detail))
        return bool(ok)

    def _poll(self, path: str, match: Any) -> tuple[int, Any]:
        deadline = time.monotonic() + self.timeout
        status, body = 0, None
        while True:
            status, body = self._call("GET", path)
            if status == 200 and match(body):
                return status, body
            if time.monotonic() > deadline:
                return status, body
            time.sleep(0.2)

    # -- steps ---------------------------------------------------------------------------------
    def health(self) -> bool:
        deadline = time.monotonic() + self.wait
        while True:
            try:
                status, body = self._call("GET", "/health")
                break
            except OSError as exc:
                if time.monotonic() >= deadline:
                    reason = getattr(exc, "reason", exc)
                    return self._record("health", False, f"GET {self.http}/health: {reason}")
                time.sleep(0.5)
        if status != 200 or not isinstance(body, dict) or body.get("status") != "ok":
            return self._record("health", False, f"GET /health answered {status}: {body}")
        return self._record("health", True, f"hub {body.get('version', '?')} at {self.http}")

    def ready(self) -> bool:
        status, body = self._call("GET", "/ready")
        if status != 200:
            checks = body.get("checks", body) if isinstance(body, dict) else body
            return self._record("ready", False, f"GET /ready answered {status}: {checks}")
        return self._record("ready", True, "database and broker connected")

    def mqtt_round_trip(self) -> None:
        key = self.device_key
        where = f"{self.mqtt_host}:{self.mqtt_port}"
        password = self.keys.device_password(key)
        topic = self.topics.device(key, Kind.TELEMETRY)
        reading = {
            "v": 1,
            "seq": 1,
            "ts": int(time.time()),
            "readings": [{"type": SMOKE_TYPE, "value": SMOKE_VALUE}],
        }
        target = MqttTarget(self.mqtt_host, self.mqtt_port, self.mqtt_ca)
        client = MqttSession(
            target=target,
            username=key,
            password=password,
            clean_session=True,
            manual_ack=False,
            timeout=self.timeout,
        )
        try:
            with client:
                self._record("mqtt", True, f"{key} connected to {where}")
                if self._publish(client, "telemetry", topic, json.dumps(reading).encode()):
                    self._telemetry_landed()
                if self._publish(client, "error", topic, INVALID_PAYLOAD):
                    self._error_landed()
        except ConnectFailed as exc:
            why = exc.reason
            if exc.refused:
                why = (
                    f"the broker refused the device credentials of {key} ({exc.reason}): "
                    "different fleet secrets, or a Mosquitto password file without this key"
                )
            self._record("mqtt", False, f"{where}: {why}")
            self._record("telemetry", None, "needs the MQTT connection")
            self._record("error", None, "needs the MQTT connection")

    def _publish(self, client: MqttSession, step: str, topic: str, payload: bytes) -> bool:
        try:
            client.publish_wait(topic, payload, qos=1)
        except (OSError, TimeoutError, RuntimeError) as exc:
            # The embedded broker acknowledges only once the hub has stored the message.
            return self._record(
                step, False, f"publish not acknowledged ({exc}); is the hub's database up?"
            )
        return True

    def _telemetry_landed(self) -> bool:
        query = urlencode({"device": self.device_key, "limit": 10})

        def found(body: Any) -> bool:
            return any(
                i["type"] == SMOKE_TYPE and i["value"] == SMOKE_VALUE
                for i in (body or {}).get("items", [])
            )

        status, body = self._poll(f"/api/telemetry?{query}", found)
        if status != 200 or not found(body):
            return self._record(
                "telemetry",
                False,
                f"no {SMOKE_TYPE}={SMOKE_VALUE} of {self.device_key} in PostgreSQL within "
                f"{self.timeout:g} s (GET /api/telemetry: {status} {str(body)[:200]})",
            )
        row = body["items"][0]
        return self._record("telemetry", True, f"stored as processed_record {row['id']}")

    def _error_landed(self) -> bool:
        query = urlencode({"device": self.device_key, "code": INVALID_CODE, "limit": 10})

        def found(body: Any) -> bool:
            return bool((body or {}).get("items"))

        status, body = self._poll(f"/api/errors?{query}", found)
        if status != 200 or not found(body):
            return self._record(
                "error",
                False,
                f"the invalid message left no {INVALID_CODE} ingest error within "
                f"{self.timeout:g} s (GET /api/errors: {status} {str(body)[:200]})",
            )
        row = body["items"][0]
        return self._record("error", True, f"ingest_error {row['id']} ({row['code']})")

    def cleanup(self) -> bool:
        path = f"/api/devices/{quote(self.device_key)}"
        try:
            status, body = self._call("DELETE", path, token=self.keys.operator_token)
        except OSError as exc:
            return self._record("cleanup", False, f"DELETE {path}: {exc}")
        if status == 200:
            return self._record(
                "cleanup",
                True,
                f"removed {body['raw_records']} raw record(s) and {body['devices']} device",
            )
        if status == 404:
            return self._record("cleanup", True, "nothing was stored")
        if status in (401, 403):
            return self._record(
                "cleanup", False, f"operator token rejected ({status}): different fleet secrets"
            )
        return self._record("cleanup", False, f"DELETE {path} answered {status}: {body}")

    def run(self) -> list[Step]:
        if self.health():
            self.ready()
            self.mqtt_round_trip()
            if any(s.name == "mqtt" and s.ok for s in self.steps):
                self.cleanup()  # it published: its rows must go, whatever else failed
        return self.steps


def ok(steps: list[Step]) -> bool:
    return all(s.ok is not False for s in steps)


def as_json(smoke: Smoke) -> str:
    return json.dumps(
        {
            "ok": ok(smoke.steps),
            "device_key": smoke.device_key,
            "steps": [asdict(s) for s in smoke.steps],
        }
    )
