"""The dashboard in headless Chromium against a running hub with devices publishing over MQTT.

Selenium is blocking and the hub serves from this test's event loop, so every browser call
goes through ``asyncio.to_thread``. Screenshots land in tests/artifacts/.
"""

from __future__ import annotations

import asyncio
import json
import time

import asyncpg

from picofleet.core.topics import Kind
from tests.conftest import RunningHub
from tests.helpers import Client, wait_for
from tests.ops.conftest import Browser

PUMPS = ("AI-PUMP01", "AI-PUMP02")
LEGACY = "7"
READINGS = 12
# Points of the soil moisture chart's line (0 when there is no such chart yet).
MOISTURE_POINTS = (
    "(() => { const s = [...document.querySelectorAll('svg.chart')].find("
    "c => c.getAttribute('aria-label').startsWith('soil_moisture_pct'));"
    "return s ? s.querySelector('polyline').getAttribute('points').trim().split(' ').length"
    " : 0; })()"
)


def _connect(hub: RunningHub, key: str) -> Client:
    c = Client(hub.mqtt_port, key, hub.keys.device_password(key), client_id=f"dev-{key}")
    assert c.connect(), f"{key} could not connect"
    return c


def _publish_fleet(hub: RunningHub) -> dict[str, Client]:
    """Two pump controllers (status + envelope telemetry) and one legacy flat-event sender."""
    now = int(time.time())
    clients = {}
    for n, key in enumerate(PUMPS):
        c = clients[key] = _connect(hub, key)
        status = {"state": "online", "fw": "1.4.0"}
        c.publish(hub.topics.device(key, Kind.STATUS), json.dumps(status), retain=True)
        for i in range(READINGS):
            body = {
                "v": 1,
                "seq": i + 1,
                "ts": now - (READINGS - i) * 60,
                "readings": [
                    {"type": "soil_moisture_pct", "value": 30 + 10 * n + (i % 5) * 2.5},
                    {"type": "pump_on", "value": i % 2},
                ],
            }
            c.publish(hub.topics.device(key, Kind.TELEMETRY), json.dumps(body))
    legacy = clients[LEGACY] = _connect(hub, LEGACY)
    for i in range(4):
        body = {
            "device_id": 7,
            "event_type": "battery_charge",
            "value": 80 - i,
            "timestamp": now - i,
        }
        legacy.publish(hub.topics.ingest, json.dumps(body))
    return clients


async def test_dashboard_lists_fleet_draws_charts_and_shows_errors_live(
    hub: RunningHub, pool: asyncpg.Pool, browser: Browser
) -> None:
    clients = await asyncio.to_thread(_publish_fleet, hub)
    try:
        expected = len(PUMPS) * READINGS * 2 + 4

        async def stored() -> bool:
            return bool(await pool.fetchval("SELECT count(*) FROM processed_record") == expected)

        await wait_for(stored)
        await _fleet_and_live_errors(hub, browser, clients[PUMPS[0]])
        await _device_charts_follow_new_readings(hub, browser, clients[PUMPS[0]])
    finally:
        for c in clients.values():
            await asyncio.to_thread(c.close)


async def _fleet_and_live_errors(hub: RunningHub, browser: Browser, pump: Client) -> None:
    await browser.get(hub.http + "/")
    keys = await browser.until(
        "const r = [...document.querySelectorAll('#fleet tbody tr[data-key]')];"
        "return r.length === 3 && r.map(x => x.dataset.key + ' ' + x.innerText);"
    )
    by_key = {k.split(" ", 1)[0]: k for k in keys}
    assert set(by_key) == {*PUMPS, LEGACY}
    assert "online" in by_key[PUMPS[0]] and "1.4.0" in by_key[PUMPS[0]]
    assert (
        "moisture" in by_key[PUMPS[1]] and "battery 80.0 %" in by_key[LEGACY]
    )  # the newest reading
    await browser.until("return document.body.dataset.live === 'on'")
    assert await browser.js("return document.documentElement.scrollWidth <= window.innerWidth")

    # A rejected message appears without a reload, its payload shown as text, not markup.
    await browser.js("window.__notReloaded = 42")
    payload = '{"v": 1, "readings": "<b id=injected>oops</b>"'
    await asyncio.to_thread(pump.publish, hub.topics.device(PUMPS[0], Kind.TELEMETRY), payload)
    row = await browser.until(
        "const r = document.querySelector('#errors tbody tr[id^=err-]');"
        "return r && [r.querySelector('.code').textContent, r.querySelector('pre').textContent,"
        " r.innerText];"
    )
    assert row[0] == "invalid_json" and row[1] == payload and PUMPS[0] in row[2]
    assert await browser.js("return window.__notReloaded") == 42
    assert await browser.js("return document.getElementById('injected')") is None
    await browser.screenshot("dashboard.png")


async def _device_charts_follow_new_readings(
    hub: RunningHub, browser: Browser, pump: Client
) -> None:
    await browser.get(f"{hub.http}/devices/{PUMPS[0]}")
    assert await browser.until(f"return {MOISTURE_POINTS}") == READINGS
    assert await browser.js("return document.querySelectorAll('svg.chart polyline').length") == 2
    await browser.until("return document.body.dataset.live === 'on'")
    await browser.screenshot("device.png")

    body = {
        "v": 1,
        "seq": READINGS + 1,
        "ts": int(time.time()),
        "readings": [{"type": "soil_moisture_pct", "value": 99.0}],
    }
    topic = hub.topics.device(PUMPS[0], Kind.TELEMETRY)
    await asyncio.to_thread(pump.publish, topic, json.dumps(body))
    await browser.until(f"return {MOISTURE_POINTS} === {READINGS + 1}")
    await browser.screenshot("device-live.png")


async def test_docs_render_offline_in_chromium(hub: RunningHub, browser: Browser) -> None:
    """Swagger UI draws the hub's operations with assets from the hub alone."""
    await browser.get(f"{hub.http}/docs")
    ops = await browser.until(
        "return document.querySelectorAll('.opblock').length || null", timeout=30
    )
    assert ops >= 10
    foreign = await browser.js(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".filter(u => !u.startsWith(location.origin))"
    )
    assert foreign == []
    await browser.screenshot("docs.png")
