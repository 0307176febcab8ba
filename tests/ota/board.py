"""A test device that decides like the shipped Pico-W updater and reboots like a board.

Unlike the scripted fakes (fleet.py) it keeps nothing across a reboot but what the real
board keeps on flash (its version, report counter, pin and newest pin/rollback time), and it
follows the firmware's rule (pico_w/ota.py ``wanted``): per-device meta first, then the
channel's; an ``install`` only when newer, a ``rollback``/``pin`` whenever the version
differs. Every "reboot" is a new MQTT session that reads both OTA topics from the broker's
retained store again. Each install is counted, so a test can say exactly how many times a
board was made to change version.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion

from picofleet.core.credentials import FleetKeys
from picofleet.core.topics import Kind, Topics
from tests.helpers import startup_body
from tests.ota.fleet import semver

DEVICE, CHANNEL = "device", "channel"
SETTLE_S = 0.3  # after both SUBACKs: the broker's retained meta has arrived by then
POLL_S = 0.05
TELEMETRY_S = 0.2


class Board:
    def __init__(
        self,
        key: str,
        *,
        port: int,
        keys: FleetKeys,
        topics: Topics,
        public_key: bytes,
        firmware: str = "1.0.0",
        device_type: str = "pico_w",
        channel: str = "stable",
    ) -> None:
        self.key, self.port, self.keys, self.topics = key, port, keys, topics
        self.public_key = Ed25519PublicKey.from_public_bytes(public_key)
        self.device_type, self.channel = device_type, channel
        # What survives a reboot (flash).
        self.firmware = firmware
        self.seq = 0
        self.pin: str | None = None
        self.down_at: dict[str, int] = {}
        self._pending: dict[str, Any] | None = None  # installed, not yet confirmed
        # What the test reads.
        self.installs: list[tuple[str, str]] = []  # (from, to), one per version change
        self.boots = 0
        self.errors: list[str] = []
        # One session's RAM.
        self._metas: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._reboot = threading.Event()
        self._stop = threading.Event()
        self._booted = threading.Event()
        self._thread: threading.Thread | None = None
        self._tseq = 0

    @property
    def own_topic(self) -> str:
        return self.topics.device(self.key, Kind.OTA)

    @property
    def channel_topic(self) -> str:
        return self.topics.ota_channel(self.device_type, self.channel)

    # -- control from the test ---------------------------------------------------------------
    def start(self) -> None:
        """Power on (again): what is on flash is kept, the rest starts from nothing."""
        self._stop.clear()
        self._booted.clear()
        self._thread = threading.Thread(target=self._run, name=f"board-{self.key}", daemon=True)
        self._thread.start()
        assert self._booted.wait(15), f"{self.key} did not boot"

    def reboot(self) -> None:
        """A power cycle; returns once the board is up again and has read its retained meta."""
        self._booted.clear()
        self._reboot.set()
        assert self._booted.wait(15), f"{self.key} did not come back"

    def stop(self) -> None:
        """Power off."""
        self._stop.set()
        self._reboot.set()
        if self._thread is not None:
            self._thread.join(15)

    def versions(self) -> list[str]:
        return [to for _, to in self.installs]

    # -- one session -------------------------------------------------------------------------
    def _session(self) -> paho.Client:
        c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"board-{self.key}",
            protocol=paho.MQTTv311,
            clean_session=True,
        )
        c.username_pw_set(self.key, self.keys.device_password(self.key))
        connected, subacked = threading.Event(), threading.Event()
        c.on_connect = lambda *_a: connected.set()
        c.on_subscribe = lambda *_a: subacked.set()
        c.on_message = self._on_message
        c.connect("127.0.0.1", self.port, keepalive=30)
        c.loop_start()
        assert connected.wait(10), f"{self.key} could not connect"
        for topic in (self.own_topic, self.channel_topic):  # own first, like the firmware
            subacked.clear()
            c.subscribe(topic, 1)
            assert subacked.wait(10), f"{self.key}: no SUBACK for {topic}"
        time.sleep(SETTLE_S)
        return c

    def _on_message(self, c: Any, u: Any, m: paho.MQTTMessage) -> None:
        source = {self.own_topic: DEVICE, self.channel_topic: CHANNEL}.get(m.topic)
        if source is not None:
            with self._lock:
                self._metas[source] = bytes(m.payload)

    def _publish(
        self, c: paho.Client, kind: Kind, body: dict[str, Any], retain: bool = False
    ) -> None:
        info = c.publish(self.topics.device(self.key, kind), json.dumps(body), qos=1, retain=retain)
        info.wait_for_publish(10)

    def _report(self, c: paho.Client, state: str, m: dict[str, Any]) -> None:
        self.seq += 1
        body = {
            "version": m["version"],
            "state": state,
            "seq": self.seq,
            "rollout": m.get("rollout"),
            "ts": int(time.time()),
        }
        self._publish(c, Kind.OTA_STATUS, body)

    def _run(self) -> None:
        first = self.boots == 0
        while not self._stop.is_set():
            with self._lock:
                self._metas = {}
            c = self._session()
            self.boots += 1
            if first:
                self._startup(c)
                first = False
            self._publish(c, Kind.STATUS, {"state": "online", "fw": self.firmware}, retain=True)
            if self._pending is not None:
                self._report(c, "booted_ok", self._pending)  # the new app confirms itself
                self._pending = None
            self._reboot.clear()
            self._booted.set()
            next_telemetry = 0.0
            while not self._reboot.is_set() and not self._stop.is_set():
                m = self._next()
                if m is not None:
                    self._install(c, m)
                    break
                if time.monotonic() >= next_telemetry:
                    self._telemetry(c)
                    next_telemetry = time.monotonic() + TELEMETRY_S
                self._reboot.wait(POLL_S)
            c.disconnect()
            c.loop_stop()

    def _startup(self, c: paho.Client) -> None:
        body = startup_body(
            self.keys, self.key, firmware=self.firmware, device_type=self.device_type
        )
        self._publish(c, Kind.STARTUP, body)

    def _telemetry(self, c: paho.Client) -> None:
        self._tseq += 1
        body = {
            "v": 1,
            "seq": self.boots * 100_000 + self._tseq,
            "ts": int(time.time()),
            "readings": [{"type": "uptime_s", "value": self._tseq}],
        }
        self._publish(c, Kind.TELEMETRY, body)

    def _install(self, c: paho.Client, m: dict[str, Any]) -> None:
        for state in ("received", "downloading", "verified", "applied"):
            self._report(c, state, m)
        self.installs.append((self.firmware, m["version"]))
        self.firmware = m["version"]
        self._pending = m  # then the reset: the session ends, the next one confirms

    # -- the firmware's decision (pico_w/ota.py) ---------------------------------------------
    def _verify(self, source: str, raw: bytes) -> dict[str, Any] | None:
        doc = json.loads(raw)
        try:
            self.public_key.verify(base64.b64decode(doc["sig"]), doc["manifest"].encode())
        except Exception as exc:  # a test board only records what it refused
            self.errors.append(f"{source}: {exc!r}")
            return None
        m: dict[str, Any] = json.loads(doc["manifest"])
        m.setdefault("action", "install")
        if m["action"] in ("pin", "rollback"):
            at = m.get("created_at") if isinstance(m.get("created_at"), int) else 0
            if at < self.down_at.get(source, 0):
                return None  # replayed: older than the newest pin/rollback taken
            self.down_at[source] = max(at, self.down_at.get(source, 0))
        if source == DEVICE:
            self.pin = m["version"] if m["action"] == "pin" else None
        return m

    def _wanted(self, m: dict[str, Any], source: str) -> bool:
        if m["device_type"] != self.device_type:
            return False
        action = m["action"]
        if action in ("pin", "rollback"):
            if action == "pin" and source != DEVICE:
                return False
            if source == CHANNEL and self.pin:
                return False
            return bool(m["version"] != self.firmware)
        if source == CHANNEL and (self.pin or m["channel"] != self.channel):
            return False
        return semver(m["version"]) > semver(self.firmware)

    def _next(self) -> dict[str, Any] | None:
        with self._lock:
            metas = dict(self._metas)
        manifests: dict[str, dict[str, Any]] = {}
        for source in (DEVICE, CHANNEL):
            raw = metas.get(source)
            if raw is None:
                continue
            if not raw:
                if source == DEVICE:
                    self.pin = None  # an empty per-device meta unpins
                continue
            m = self._verify(source, raw)
            if m is not None:
                manifests[source] = m
        for source in (DEVICE, CHANNEL):
            m = manifests.get(source)
            if m is not None and self._wanted(m, source):
                return m
        return None
