"""Real parts for every test: PostgreSQL, amqtt in-process, Mosquitto as a subprocess.

One PostgreSQL cluster per session; each test gets its own database cloned from a migrated
template, so tests never share rows. A missing component fails its tests (`make test`
installs them all); PICOFLEET_REQUIRE_ALL=0 turns that into a skip for a partial local run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog
from pydantic import SecretStr

from picofleet.broker.embedded import EmbeddedBroker
from picofleet.broker.policy import Policy
from picofleet.core import db
from picofleet.core.credentials import FleetKeys
from picofleet.core.pgembed import EmbeddedPostgres
from picofleet.core.settings import Settings
from picofleet.core.topics import Topics
from tests.helpers import SECRET, free_port

REQUIRE_ALL = os.environ.get("PICOFLEET_REQUIRE_ALL", "1") != "0"
TEMPLATE = "picofleet_template"


def need(condition: bool, what: str) -> None:
    """Fail when a component is missing (skip only with PICOFLEET_REQUIRE_ALL=0)."""
    if not condition:
        if REQUIRE_ALL:
            pytest.fail(f"required component missing: {what}")
        pytest.skip(f"{what} not available")


@pytest.fixture(autouse=True)
def _quiet_structlog() -> Iterator[None]:
    structlog.reset_defaults()
    structlog.configure(cache_logger_on_first_use=False)
    yield


@pytest.fixture
def hub_data() -> Iterator[Path]:
    """A data dir for a hub whose embedded PostgreSQL runs as another user (we are root).

    Outside pytest's temp base: pytest resets that to 0700 when another session starts,
    which locks the cluster's user out. The cluster is stopped and the dir removed after."""
    root = Path(tempfile.mkdtemp(prefix="picofleet-test-hub-"))
    os.chmod(root, 0o755)
    yield root
    EmbeddedPostgres(root).stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[EmbeddedPostgres]:
    # Outside pytest's numbered temp dirs: those are rotated away by other pytest sessions.
    root = Path(tempfile.mkdtemp(prefix="picofleet-test-pg-"))
    os.chmod(root, 0o755)
    pg = EmbeddedPostgres(root)
    pg.start()
    pg.ensure_database(TEMPLATE)
    asyncio.run(db.migrate(pg.url(TEMPLATE)))
    yield pg
    pg.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def db_url(pg_cluster: EmbeddedPostgres) -> AsyncIterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_cluster.url("postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE {TEMPLATE}')
    finally:
        await admin.close()
    yield pg_cluster.url(name)
    admin = await asyncpg.connect(pg_cluster.url("postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(db_url, max_size=4)
    yield p
    await p.close()


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=db_url,
        provision_secret=SecretStr(SECRET),
        mqtt_port=free_port(),
        mqtt_hub_port=free_port(),
        mqtts_port=free_port(),
        http_port=free_port(),
        https_port=free_port(),
        topic_prefix="picofleet",
        mqtt_bind="127.0.0.1",
        http_bind="127.0.0.1",
        bridge_client_id=f"bridge-{uuid.uuid4().hex[:6]}",
        batch_max_age_ms=5,
    )


@pytest.fixture
def keys() -> FleetKeys:
    return FleetKeys(SECRET.encode())


@pytest.fixture
def policy(keys: FleetKeys) -> Policy:
    return Policy(Topics("picofleet"), keys)


@pytest.fixture
async def amqtt_broker(policy: Policy) -> AsyncIterator[EmbeddedBroker]:
    async with EmbeddedBroker(policy=policy, bind="127.0.0.1", port=free_port()) as b:
        yield b


def mosquitto_available() -> bool:
    return bool(shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists())


@pytest.fixture
async def mosquitto_factory(tmp_path: Path, policy: Policy) -> AsyncIterator[Any]:
    """Start Mosquitto with the generated config for the given device keys."""
    from picofleet.broker import mosquitto

    need(mosquitto_available(), "mosquitto")
    stack = contextlib.AsyncExitStack()

    async def start(device_keys: list[str], port: int | None = None, tls: Any = None) -> Any:
        """Devices connect to ``.port``, the hub and operators to ``.hub_port``; with ``tls``
        (TlsFiles) devices also to ``.tls_port`` and the hub's listener speaks TLS."""
        port, hub_port = port or free_port(), free_port()
        tls_port = free_port() if tls is not None else None
        conf = mosquitto.write_config(
            tmp_path / f"mosq-{port}",
            policy,
            device_keys=device_keys,
            bind="127.0.0.1",
            port=port,
            hub_port=hub_port,
            tls=tls,
            tls_port=tls_port,
            hub_tls=tls is not None,
        )
        return await stack.enter_async_context(
            mosquitto.ManagedMosquitto(conf, port=port, hub_port=hub_port, tls_port=tls_port)
        )

    async with stack:
        yield start


class RunningHub:
    def __init__(
        self, settings: Settings, task: asyncio.Task[None], stop: asyncio.Event, keys: FleetKeys
    ) -> None:
        self.settings, self.task, self.stop_event, self.keys = settings, task, stop, keys
        self.topics = Topics(settings.topic_prefix)

    @property
    def mqtt_port(self) -> int:
        """Where devices connect."""
        return self.settings.mqtt_port

    @property
    def operator_port(self) -> int:
        """Where the hub's own and operators' clients connect (a listener of its own on a
        managed Mosquitto)."""
        return self.settings.hub_mqtt_port

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.settings.http_port}"

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.wait_for(self.task, 20)


@contextlib.asynccontextmanager
async def running_hub(
    settings: Settings,
    keys: FleetKeys | None = None,
    *,
    roles: frozenset[str] = frozenset({"bridge", "http"}),
    embedded_broker: bool = True,
    stop_timeout: float = 20,
) -> AsyncIterator[RunningHub]:
    """The hub's roles in this loop, on ``settings``; stopped (cleanly) on exit."""
    from picofleet.hub import run_hub

    for port in ("mqtts_port", "https_port"):  # never the shared defaults 8883, 8443
        if port not in settings.model_fields_set:
            settings = settings.model_copy(update={port: free_port()})
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_hub(
            settings,
            roles=set(roles),
            stop=stop,
            embedded_broker=embedded_broker,
            ready=ready,
            handle_signals=False,
        )
    )
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()
    assert ready.is_set(), "hub did not become ready"
    running = RunningHub(settings, task, stop, keys or FleetKeys(SECRET.encode()))
    try:
        yield running
    finally:
        if not task.done():
            stop.set()
            await asyncio.wait_for(task, stop_timeout)


@pytest.fixture
async def hub(settings: Settings, keys: FleetKeys) -> AsyncIterator[RunningHub]:
    """The whole hub (amqtt, bridge, HTTP) in this loop, on the test's own database."""
    async with running_hub(settings, keys) as running:
        yield running
