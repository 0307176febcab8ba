"""The hub's side of OTA tests on the MicroPython board: release files, signed metas, a proxy
that cuts artifact downloads, and the deploy log as the device reported it.

Release files are the firmware's own ``pico_w/main.py`` with another VERSION (and, for the
failure cases, a ``main.py`` that raises at import or one that runs but never publishes).
Metas are signed with the hub's real key and published through the hub's own ``ota_meta``
table, so the announcer delivers them as it delivers any rollout's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import re
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import asyncpg

from picofleet.core.settings import Settings
from picofleet.core.signing import Signer
from picofleet.ota import meta
from picofleet.ota.manifest import manifest_text
from tests.helpers import free_port

FIRMWARE = Path(__file__).resolve().parents[2] / "pico_w"
_VERSION_RE = re.compile(rb'^VERSION = "([^"]*)"', re.M)

# A main.py that runs, feeds the watchdog and never connects: only a trial deadline can
# tell it from a good release.
_SILENT_RUN = """def _run():
    import time

    import machine

    wdt = machine.WDT(timeout=8000)
    while True:
        wdt.feed()
        time.sleep(0.2)
"""


def release_main(version: str, *, kind: str = "ok", pad_to: int = 0) -> bytes:
    """``main.py`` of a release: ``ok`` (the firmware's own), ``crash`` (raises at import)
    or ``silent`` (runs, never publishes); ``pad_to`` adds comment lines up to that size,
    so a download spans several flash commits."""
    text = (FIRMWARE / "main.py").read_bytes()
    text, n = _VERSION_RE.subn(f'VERSION = "{version}"'.encode(), text)
    if n != 1:
        raise ValueError("pico_w/main.py has no VERSION line")
    if kind == "crash":
        text = text.replace(
            b"\n\ndef _run():", b'\nraise RuntimeError("bad release")\n\n\ndef _run():', 1
        )
    elif kind == "silent":
        head, sep, _ = text.partition(b"def _run():")
        if not sep:
            raise ValueError("pico_w/main.py has no _run()")
        text = head + _SILENT_RUN.encode() + b'\n\nif __name__ == "__main__":\n    _run()\n'
    elif kind != "ok":
        raise ValueError(f"unknown release kind {kind!r}")
    line = b"# " + b"x" * 76 + b"\n"
    while len(text) + len(line) <= pad_to:
        text += line
    return text


def version_of(main_py: bytes | None) -> str | None:
    m = _VERSION_RE.search(main_py or b"")
    return m.group(1).decode() if m else None


# -- signed metas ---------------------------------------------------------------------------
def manifest(settings: Settings, data: bytes, version: str, **over: Any) -> dict[str, Any]:
    """The manifest fields a rollout of ``data`` would sign (artifact served by the hub)."""
    sha = hashlib.sha256(data).hexdigest()
    fields: dict[str, Any] = {
        "version": version,
        "device_type": "pico_w",
        "channel": "stable",
        "sha256": sha,
        "size": len(data),
        "artifact_url": f"http://127.0.0.1:{settings.http_port}/ota/artifacts/{sha}",
        "created_at": int(time.time()),
        "rollout": "0",
        "action": "install",
    }
    fields.update(over)
    return fields


def signed(signer: Signer, fields: dict[str, Any], *, key_id: str | None = None) -> str:
    text = manifest_text(fields)
    sig = base64.b64encode(signer.sign(text.encode())).decode()
    return json.dumps({"manifest": text, "sig": sig, "key_id": key_id or signer.key_id})


async def put_device_meta(pool: asyncpg.Pool, device_key: str, payload: str) -> None:
    """Retain ``payload`` on the device's OTA topic, through the announcer."""
    async with pool.acquire() as conn:
        await meta.set_device_meta(conn, "pico_w", [device_key], payload, None)


async def put_channel_meta(pool: asyncpg.Pool, payload: str, channel: str = "stable") -> None:
    async with pool.acquire() as conn:
        await meta.set_channel_meta(conn, "pico_w", channel, payload, None)


# -- a proxy that cuts downloads ------------------------------------------------------------
class CutProxy:
    """TCP proxy in front of the hub's HTTP port: the first ``cuts`` responses are reset
    after ``after`` bytes (a Wi-Fi drop mid-download); later ones pass whole, ``pace_s``
    seconds per KB (a slow link). Records each request's ``Range`` header, each response's
    status and how many response bytes each connection carried."""

    def __init__(
        self, target_port: int, *, after: int = 0, cuts: int = 0, pace_s: float = 0.0
    ) -> None:
        self.target_port = target_port
        self.after, self.cuts, self.pace_s = after, cuts, pace_s
        self.port = free_port()
        self.ranges: list[str | None] = []
        self.statuses: list[int] = []
        self.sent: list[int] = []
        self._server: asyncio.Server | None = None

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            head = await r.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            w.close()
            return
        m = re.search(rb"^range:\s*(\S+)\r$", head, re.M | re.I)
        self.ranges.append(m.group(1).decode() if m else None)
        cut = len(self.ranges) <= self.cuts
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        uw.write(head)
        await uw.drain()
        sent = 0
        with contextlib.suppress(ConnectionError):
            while data := await ur.read(1024 if self.pace_s else 4096):
                if self.pace_s:
                    await asyncio.sleep(self.pace_s)
                if not sent:
                    self.statuses.append(int(data.split(None, 2)[1]))
                if cut and sent + len(data) >= self.after:
                    w.write(data[: self.after - sent])
                    await w.drain()
                    sent = self.after
                    break
                w.write(data)
                await w.drain()
                sent += len(data)
        self.sent.append(sent)
        uw.close()
        if cut and w.transport is not None:
            w.transport.abort()  # a reset, not a clean end: the device sees the cut
        else:
            w.close()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
