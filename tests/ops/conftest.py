"""Fixtures of the operator tests: the hub's HTTP app in-process, on the test's database, and
headless Chromium (screenshots land in tests/artifacts/)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from picofleet.bridge.service import Ingest
from picofleet.core.credentials import FleetKeys
from picofleet.core.settings import Settings
from picofleet.hub import build_app
from picofleet.web.app import HubContext
from tests.conftest import RunningHub, need
from tests.faults import TcpProxy
from tests.helpers import wait_for

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=412,915",  # a phone
)
DESKTOP = (1280, 1000)
PHONE = (412, 915)


@pytest.fixture
async def hub_ctx(settings: Settings, pool: asyncpg.Pool, keys: FleetKeys) -> HubContext:
    """An HTTP-only hub (no bridge) on the test's database."""
    ingest = Ingest(settings=settings, pool=pool, keys=keys)
    await ingest.refresh_record_types(force=True)
    ingest.db_ok = True
    return HubContext(settings=settings, pool=pool, ingest=ingest, keys=keys)


@pytest.fixture
async def api(hub_ctx: HubContext) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_app(hub_ctx))
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        yield client


@pytest.fixture
async def db_proxy(db_url: str) -> AsyncIterator[TcpProxy]:
    parts = urlsplit(db_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    async with proxy:
        yield proxy


def via(url: str, port: int) -> str:
    """``url`` with its port replaced (to go through a proxy)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit(":", 1)[0] + f":{port}"
    return urlunsplit(parts._replace(netloc=netloc))


class Browser:
    """Async face of a blocking WebDriver."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    async def get(self, url: str) -> None:
        await asyncio.to_thread(self.driver.get, url)

    async def js(self, script: str, *args: Any) -> Any:
        return await asyncio.to_thread(self.driver.execute_script, script, *args)

    async def until(self, script: str, *, timeout: float = 15.0) -> Any:
        async def check() -> Any:
            return await self.js(script)

        return await wait_for(check, timeout=timeout, interval=0.1)

    async def size(self, width: int, height: int) -> None:
        await asyncio.to_thread(self.driver.set_window_size, width, height)

    async def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        await asyncio.to_thread(self.driver.save_screenshot, str(path))
        return path


@pytest.fixture
async def browser(hub: RunningHub, tmp_path: Path) -> AsyncIterator[Browser]:
    """Headless Chromium; quits before the hub stops (it depends on ``hub``)."""
    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    need(bool(chromium and driver_bin), "chromium and chromium-driver (apt)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(chromium)
    for flag in CHROME_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = await asyncio.to_thread(
        webdriver.Chrome, service=Service(str(driver_bin)), options=opts
    )
    driver.set_page_load_timeout(30)
    try:
        yield Browser(driver)
    finally:
        await asyncio.to_thread(driver.quit)
