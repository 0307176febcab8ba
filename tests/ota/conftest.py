"""OTA test fixtures: a fast announcer tick, a signing key, fake fleets, the CLI, the API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from picofleet.core.credentials import FleetKeys
from picofleet.core.settings import Settings
from picofleet.core.signing import Signer, init_keys
from tests.conftest import RunningHub, running_hub
from tests.helpers import SECRET, wait_for
from tests.ota.fleet import FakeDevice, Fleet

TICK_S = "0.1"
PICOFLEET = Path(sys.executable).parent / "picofleet"


def app_source(version: str, body: str = "") -> bytes:
    """A small, valid MicroPython main.py that differs per version."""
    return (
        f"VERSION = {version!r}\n\n\ndef main():\n    print('app', VERSION)\n{body}\n\nmain()\n"
    ).encode()


@pytest.fixture(autouse=True)
def _fast_ota(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PICOFLEET_OTA_TICK_S", TICK_S)


@pytest.fixture
def signer(settings: Settings) -> Signer:
    return init_keys(settings.data_path)


@pytest.fixture
async def fleet(hub: RunningHub, signer: Signer) -> AsyncIterator[Fleet]:
    f = Fleet(port=hub.mqtt_port, keys=hub.keys, topics=hub.topics, public_key=signer.public_raw)
    yield f
    await asyncio.to_thread(f.stop)


async def spawn(fleet: Fleet, pool: asyncpg.Pool, keys: list[str], **kw: Any) -> list[FakeDevice]:
    """Start fake devices and wait until the hub has provisioned every one of them."""
    devices = await asyncio.to_thread(fleet.spawn, keys, **kw)

    async def provisioned() -> bool:
        n = await pool.fetchval(
            "SELECT count(*) FROM device WHERE device_key = ANY($1) AND provisioned_at IS NOT NULL",
            keys,
        )
        return bool(n == len(keys))

    await wait_for(provisioned)
    return devices


def cli_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICOFLEET_")}
    env.update(
        PICOFLEET_DATA_DIR=str(settings.data_dir),
        PICOFLEET_DATABASE_URL=str(settings.database_url),
        PICOFLEET_PROVISION_SECRET=SECRET,
        PICOFLEET_HTTP_PORT=str(settings.http_port),
        # The hub's bind too: the default artifact URL is the address devices reach it on.
        PICOFLEET_HTTP_BIND=settings.http_bind,
        PICOFLEET_LOG_LEVEL="WARNING",
    )
    return env


async def picofleet(settings: Settings, *args: str, **env: str) -> tuple[int, str, str]:
    """Run the real ``picofleet`` entry point; (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        str(PICOFLEET),
        *args,
        env={**cli_env(settings), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def picofleet_json(settings: Settings, *args: str) -> Any:
    rc, out, err = await picofleet(settings, *args, "--json")
    assert rc == 0, err
    return json.loads(out)


@pytest.fixture
async def api(hub: RunningHub) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {hub.keys.operator_token}"}
    async with httpx.AsyncClient(base_url=hub.http, headers=headers, timeout=30) as c:
        yield c


async def release(api: httpx.AsyncClient, version: str, data: bytes | None = None) -> Any:
    r = await api.post(
        "/api/ota/releases",
        params={"version": version, "device_type": "pico_w"},
        content=app_source(version) if data is None else data,
    )
    assert r.status_code == 201, r.text
    return r.json()


async def rollout(api: httpx.AsyncClient, **body: Any) -> Any:
    r = await api.post("/api/ota/rollouts", json=body)
    assert r.status_code == 201, r.text
    return r.json()


async def rollout_state(pool: asyncpg.Pool, rollout_id: int) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT * FROM ota_rollout WHERE id = $1", rollout_id)
    assert row is not None
    return row


async def wait_state(
    pool: asyncpg.Pool, rollout_id: int, state: str, timeout: float = 30
) -> asyncpg.Record:
    async def check() -> asyncpg.Record | None:
        r = await rollout_state(pool, rollout_id)
        return r if r["state"] == state else None

    row: asyncpg.Record = await wait_for(check, timeout=timeout, interval=0.1)
    return row


async def member_states(pool: asyncpg.Pool, rollout_id: int) -> dict[str, str]:
    rows = await pool.fetch(
        "SELECT device_key, state FROM ota_rollout_device WHERE rollout_id = $1", rollout_id
    )
    return {r["device_key"]: r["state"] for r in rows}


@pytest.fixture
async def hub_factory(
    settings: Settings, keys: FleetKeys
) -> AsyncIterator[Callable[[], Awaitable[RunningHub]]]:
    """Start another hub on the same settings and database (after stopping the first)."""
    async with contextlib.AsyncExitStack() as stack:

        async def start() -> RunningHub:
            return await stack.enter_async_context(running_hub(settings, keys))

        yield start
