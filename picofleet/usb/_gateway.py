"""The USB serial gateway: every USB Pico's lines become that Pico's MQTT telemetry.

One scan loop owns everything: every few seconds it lists the Pico ports (pyserial's port
enumeration plus PICOFLEET_USB_PORTS), starts a reader for each new port, and cancels the
readers of ports that vanished or that `usb flash` holds. A reader ends by itself when its
port errors (unplugged); the next scan after a replug starts a fresh one. Lines are read
with the event loop (``add_reader`` on the port's descriptor), so no thread per board.

A board is published under its device key: the USB serial number (which is the Pico's
unique id), else the key configured for the port, else the ``id`` the board states in its
lines or in its reply to ``hello``. Lines that arrive before the key is known wait in a
small bounded queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from picofleet.core import logs
from picofleet.core.credentials import FleetKeys
from picofleet.core.mqttclient import MqttSession, MqttTarget, hub_target
from picofleet.core.settings import Settings
from picofleet.core.topics import Kind, Topics, valid_device_key
from picofleet.usb._discovery import Mode, UsbBoard, extra_ports, serial_boards
from picofleet.usb._hold import held_ports
from picofleet.usb._lines import Line, LineKind, LineSplitter, parse_line
from picofleet.usb._publisher import DRAIN_S, device_session
from picofleet.usb._settings import UsbSettings

PENDING_MAX = 100  # lines held per port until its device key is known
_HELLO = b"hello\r\n"


def broker_endpoint(settings: Settings) -> MqttTarget:
    """The broker the hub uses: PICOFLEET_MQTT_URL, else the embedded one on this host (over
    TLS when the hub speaks it)."""
    return hub_target(settings, device=True)


@dataclass
class _Port:
    board: UsbBoard
    key: str | None
    pending: deque[tuple[Line, float]] = field(default_factory=lambda: deque(maxlen=PENDING_MAX))


def _open(port: str) -> Any:
    import serial

    return serial.Serial(port, 115200, timeout=0, exclusive=True)


class UsbGateway:
    """Reads USB Picos, publishes their telemetry.

    Args:
        host, port: the MQTT broker.
        ca: its CA certificate, when it speaks TLS.
        keys: derives each device's MQTT password.
        topics: the topic contract.
        usb: the USB settings (extra ports, scan interval, queue bound).
        hold_dir: where `usb flash` asks for ports (None: never let go of a port).
        discover: lists Pico serial ports (pyserial's enumeration by default).
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        keys: FleetKeys,
        topics: Topics,
        usb: UsbSettings,
        hold_dir: Path | None = None,
        discover: Callable[[], list[UsbBoard]] = serial_boards,
        ca: Path | None = None,
    ) -> None:
        self.host, self.port, self.ca = host, port, ca
        self.keys, self.topics, self.usb = keys, topics, usb
        self.hold_dir = hold_dir
        self._discover = discover
        self._publishers: dict[str, MqttSession] = {}
        self._seq: dict[str, int] = {}
        self._last_ts: dict[str, float] = {}
        self._last_error: dict[str, str] = {}
        self.stats: Counter[str] = Counter()
        self._log = logs.get("picofleet.usb.gateway")

    def boards(self) -> dict[str, UsbBoard]:
        found = [b for b in self._discover() if b.mode is Mode.REPL]
        found += extra_ports(self.usb.port_keys(), found)
        return {b.port: b for b in found if b.port}

    async def run(self, stop: asyncio.Event) -> None:
        readers: dict[str, asyncio.Task[None]] = {}
        self._log.info("usb.gateway_started", broker=f"{self.host}:{self.port}")
        try:
            while not stop.is_set():
                boards = self.boards()
                held = held_ports(self.hold_dir) if self.hold_dir else set()
                for port_name, task in list(readers.items()):
                    if task.done() or port_name in held or port_name not in boards:
                        task.cancel()
                        (outcome,) = await asyncio.gather(task, return_exceptions=True)
                        if isinstance(outcome, Exception):
                            self._log.error(
                                "usb.reader_failed", port=port_name, error=repr(outcome)
                            )
                        del readers[port_name]
                for port_name, board in boards.items():
                    if port_name not in readers and port_name not in held:
                        readers[port_name] = asyncio.create_task(
                            self._serve(board), name=f"usb-gateway[{port_name}].read"
                        )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.usb.usb_scan_interval_s)
        finally:
            for task in readers.values():
                task.cancel()
            await asyncio.gather(*readers.values(), return_exceptions=True)
            publishers = list(self._publishers.values())
            self._publishers.clear()
            await asyncio.gather(*(asyncio.to_thread(p.close, DRAIN_S) for p in publishers))
            self._log.info("usb.gateway_stopped", **self.stats)

    async def _serve(self, board: UsbBoard) -> None:
        import serial

        assert board.port is not None
        name = board.port
        log = self._log.bind(port=name)
        try:
            ser = await asyncio.to_thread(_open, name)
        except (OSError, serial.SerialException) as exc:
            if self._last_error.get(name) != str(exc):
                log.warning("usb.port_unavailable", error=str(exc))
                self._last_error[name] = str(exc)
            return
        self._last_error.pop(name, None)
        key = board.serial_number or board.key
        state = _Port(board, key if key and valid_device_key(key) else None)
        log.info("usb.port_open", device_key=state.key)
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        fd = ser.fileno()
        loop.add_reader(fd, ready.set)
        splitter = LineSplitter()
        try:
            if state.key is None:
                ser.write(_HELLO)  # pico_usb firmware answers with its id
            while True:
                await ready.wait()
                ready.clear()
                try:
                    data = ser.read(4096)
                except (OSError, serial.SerialException) as exc:
                    log.info("usb.port_gone", error=str(exc))
                    return
                now = time.time()
                for raw in splitter.feed(data):
                    self._handle(state, raw, now)
        finally:
            loop.remove_reader(fd)
            with contextlib.suppress(Exception):
                ser.close()

    def _handle(self, state: _Port, raw: bytes, now: float) -> None:
        line = parse_line(raw.rstrip(b"\r"))
        self.stats[line.kind.value] += 1
        if line.kind is LineKind.SKIP:
            return
        stated = line.device_id if line.device_id and valid_device_key(line.device_id) else None
        if state.key is None and stated and line.kind in (LineKind.HELLO, LineKind.READINGS):
            state.key = stated
            self._log.info("usb.board_identified", port=state.board.port, device_key=stated)
            while state.pending:
                self._publish(state.key, *state.pending.popleft())
        if line.kind is LineKind.HELLO:
            self._log.info("usb.board_hello", port=state.board.port, device_key=stated, fw=line.fw)
            return
        if state.key is None:
            if len(state.pending) == state.pending.maxlen:
                self.stats["dropped_unidentified"] += 1
            state.pending.append((line, now))
            return
        self._publish(state.key, line, now)

    def _publish(self, key: str, line: Line, received: float) -> None:
        if line.kind is LineKind.READINGS:
            # The board has no clock: a line's time is when it arrived, kept 1 ms apart from
            # the board's previous line, so two equal readings that came in one read stay
            # two facts. seq is ours (the board's restarts at every boot), monotonic across
            # gateway restarts because it starts from the clock.
            ts = max(round(received, 3), round(self._last_ts.get(key, 0.0) + 0.001, 3))
            seq = max(self._seq.get(key, 0) + 1, time.time_ns() // 1_000_000)
            self._last_ts[key], self._seq[key] = ts, seq
            payload = line.envelope(seq=seq, ts=ts, key=key)
        else:
            payload = line.raw.rstrip(b"\r")
        pub = self._publishers.get(key)
        if pub is None:
            pub = device_session(
                target=MqttTarget(self.host, self.port, self.ca),
                key=key,
                password=self.keys.device_password(key),
                queue_max=self.usb.usb_queue_max,
            )
            pub.start()
            self._publishers[key] = pub
        if pub.queue(self.topics.device(key, Kind.TELEMETRY), payload):
            self.stats["published"] += 1
        else:
            self.stats["dropped_queue_full"] += 1
