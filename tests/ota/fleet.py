"""Scripted fake Pico-Ws for OTA tests.

Each device is a real MQTT client with its own derived credentials: it announces itself with
a startup message, sends telemetry, subscribes to its per-device and channel OTA topics,
verifies every meta's Ed25519 signature with ``cryptography`` before reading the manifest,
downloads the artifact from the hub's HTTP server and reports the states a behaviour
scripts (with a per-device ``seq``). The real firmware's OTA code is exercised separately
(test_e2e_firmware.py); these fakes make fleet-level outcomes deterministic.
"""

from __future__ import annotations

import base64
import hashlib
import json
import queue
import threading
import time
from enum import StrEnum
from typing import Any

import httpx
import paho.mqtt.client as paho
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion

from picofleet.core.credentials import FleetKeys
from picofleet.core.topics import Kind, Topics
from tests.helpers import startup_body


class Behaviour(StrEnum):
    OK = "ok"  # installs, boots, confirms, keeps sending telemetry
    BOOT_LOOP = "boot_loop"  # installs, then boot.py restores the backup: rolled_back
    HASH_MISMATCH = "hash_mismatch"  # download does not match: failed
    SILENT = "silent"  # says "received", then nothing ever again


def semver(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


class FakeDevice:
    def __init__(
        self,
        key: str,
        *,
        port: int,
        keys: FleetKeys,
        topics: Topics,
        public_key: bytes,
        behaviour: Behaviour = Behaviour.OK,
        firmware: str = "1.0.0",
        device_type: str = "pico_w",
        channel: str = "stable",
        step_s: float = 0.02,
        telemetry_s: float = 0.2,
    ) -> None:
        self.key, self.port, self.keys, self.topics = key, port, keys, topics
        self.public_key = Ed25519PublicKey.from_public_bytes(public_key)
        self.behaviour = behaviour
        self.firmware = firmware
        self.device_type, self.channel = device_type, channel
        self.step_s, self.telemetry_s = step_s, telemetry_s
        self.seq = 0  # OTA report counter; survives simulated resets
        self.metas: list[tuple[str, bytes]] = []  # every OTA message received
        self.foreign: list[tuple[str, bytes]] = []  # messages on topics it never subscribed to
        self.reports: list[dict[str, Any]] = []
        self.handled: set[tuple[str, str]] = set()
        self.alive = True
        self.pinned = False
        self._channel_meta = b""
        self._tseq = 0
        self._lock = threading.Lock()
        self._work: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._connected = threading.Event()
        c = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"fake-{key}", protocol=paho.MQTTv311
        )
        c.username_pw_set(key, keys.device_password(key))
        c.reconnect_delay_set(min_delay=1, max_delay=2)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        self.client = c

    # -- MQTT -------------------------------------------------------------------------------
    @property
    def ota_topics(self) -> list[str]:
        return [
            self.topics.device(self.key, Kind.OTA),
            self.topics.ota_channel(self.device_type, self.channel),
        ]

    def _on_connect(self, c: Any, u: Any, f: Any, rc: Any, p: Any) -> None:
        if not rc.is_failure:
            c.subscribe([(t, 1) for t in self.ota_topics])
            self._connected.set()

    def _on_message(self, c: Any, u: Any, m: paho.MQTTMessage) -> None:
        with self._lock:
            if m.topic not in self.ota_topics:
                # amqtt 0.12 replays retained messages of other sessions' filters on connect;
                # a device acts only on its own topics (see the report on this).
                self.foreign.append((m.topic, bytes(m.payload)))
                return
            self.metas.append((m.topic, bytes(m.payload)))
        self._work.put((m.topic, bytes(m.payload)))

    def _publish(self, kind: Kind, body: dict[str, Any]) -> None:
        self.client.publish(self.topics.device(self.key, kind), json.dumps(body), qos=1)

    def start(self) -> None:
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        assert self._connected.wait(10), f"{self.key} could not connect"
        body = startup_body(
            self.keys,
            self.key,
            firmware=self.firmware,
            device_type=self.device_type,
            clock_drift_s=0,
        )
        self._publish(Kind.STARTUP, body)
        for target in (self._worker, self._telemetry):
            t = threading.Thread(target=target, name=f"fake-{self.key}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._work.put(None)
        for t in self._threads:
            t.join(5)
        self.client.disconnect()
        self.client.loop_stop()

    def reset(self) -> None:
        """A power cycle: RAM state is gone, the retained meta is read again on subscribe."""
        self.pinned, self._channel_meta = False, b""
        self._connected.clear()
        self.client.reconnect()
        assert self._connected.wait(10), f"{self.key} could not reconnect"

    def report(
        self, state: str, version: str, rollout: str, reason: str | None = None, **extra: Any
    ) -> None:
        self.seq += 1
        body = {
            "version": version,
            "state": state,
            "reason": reason,
            "detail": extra.pop("detail", ""),
            "seq": extra.pop("seq", self.seq),
            "rollout": rollout,
            "ts": int(time.time()),
        }
        with self._lock:
            self.reports.append(body)
        self._publish(Kind.OTA_STATUS, body)

    def _telemetry(self) -> None:
        while not self._stop.wait(self.telemetry_s):
            if not self.alive:
                continue
            self._tseq += 1
            self._publish(
                Kind.TELEMETRY,
                {
                    "v": 1,
                    "seq": self._tseq,
                    "ts": int(time.time()),
                    "readings": [{"type": "uptime_s", "value": self._tseq}],
                },
            )

    # -- the updater --------------------------------------------------------------------------
    def received_manifests(self) -> list[dict[str, Any]]:
        """Manifests of every non-empty meta received (signature already verified)."""
        with self._lock:
            metas = list(self.metas)
        out = []
        for _, payload in metas:
            if payload:
                meta = json.loads(payload)
                out.append(json.loads(meta["manifest"]))
        return out

    def _worker(self) -> None:
        while True:
            item = self._work.get()
            if item is None or self._stop.is_set():
                return
            if self.alive:
                self._handle(*item)

    def _handle(self, topic: str, payload: bytes) -> None:
        own = topic == self.topics.device(self.key, Kind.OTA)
        if not own:
            self._channel_meta = payload
        if not payload:
            if own and self.pinned:
                self.pinned = False  # unpinned: the channel's meta counts again
                if self._channel_meta:
                    self._handle(self.ota_topics[1], self._channel_meta)
            return
        meta = json.loads(payload)
        try:
            self.public_key.verify(base64.b64decode(meta["sig"]), meta["manifest"].encode())
        except InvalidSignature:
            self.report("failed", "?", "?", "sig_invalid")
            return
        m = json.loads(meta["manifest"])
        if m["device_type"] != self.device_type:
            return
        version, rollout, action = m["version"], m["rollout"], m["action"]
        if own and action == "pin":
            self.pinned = True
        elif self.pinned and not own:
            return  # pinned: ignore channel meta
        if (rollout, version) in self.handled:
            return
        if action == "install" and semver(version) <= semver(self.firmware):
            return
        if action in ("rollback", "pin") and version == self.firmware:
            return
        self.handled.add((rollout, version))
        self._install(m)

    def _step(self, state: str, m: dict[str, Any], reason: str | None = None) -> None:
        time.sleep(self.step_s)
        self.report(state, m["version"], m["rollout"], reason)

    def _download(self, url: str) -> bytes:
        """Like the firmware: keep trying while the hub is away (a restart mid-download)."""
        for _ in range(150):
            if self._stop.is_set():
                break
            try:
                r = httpx.get(url, timeout=5)
                if r.status_code == 200:
                    return r.content
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        return b""

    def _install(self, m: dict[str, Any]) -> None:
        self._step("received", m)
        if self.behaviour is Behaviour.SILENT:
            self.alive = False
            return
        self._step("downloading", m)
        data = self._download(m["artifact_url"])
        ok = len(data) == m["size"] and hashlib.sha256(data).hexdigest() == m["sha256"]
        if self.behaviour is Behaviour.HASH_MISMATCH or not ok:
            self._step("failed", m, "hash_mismatch")
            return
        self._step("verified", m)
        self._step("applied", m)
        time.sleep(self.step_s * 3)  # reset
        if self.behaviour is Behaviour.BOOT_LOOP:
            self._step("rolled_back", m, "boot_loop")
            return
        self.firmware = m["version"]
        self._step("booted_ok", m)


class Fleet:
    """Fake devices against one running hub; stops them all at the end of the test."""

    def __init__(self, *, port: int, keys: FleetKeys, topics: Topics, public_key: bytes) -> None:
        self.port, self.keys, self.topics, self.public_key = port, keys, topics, public_key
        self.devices: list[FakeDevice] = []

    def spawn(self, keys: list[str], **kw: Any) -> list[FakeDevice]:
        made = [
            FakeDevice(
                k,
                port=self.port,
                keys=self.keys,
                topics=self.topics,
                public_key=self.public_key,
                **kw,
            )
            for k in keys
        ]
        for d in made:
            d.start()
            self.devices.append(d)
        return made

    def stop(self) -> None:
        for d in self.devices:
            d.stop()
