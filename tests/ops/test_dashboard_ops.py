"""The operator's dashboard in headless Chromium, desktop and phone widths, on a running hub:
a week of data (SQL, rolled up by the real job), devices that answer over MQTT, and a rollout
halted by real boot-looping devices. Every action goes through the page's buttons with the
operator token typed once (sessionStorage); the outcome is checked in PostgreSQL.

Screenshots (tests/artifacts/, each as NAME-desktop.png and NAME-phone.png): overview,
device-7d, pump-acked, alert-acked, rollout-halted, rollout-rolled-back, rollout-paused.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest

from picofleet.core.signing import init_keys
from tests.conftest import RunningHub
from tests.ops.conftest import DESKTOP, PHONE, Browser
from tests.ops.test_device_cmd import KEY as ACKING_KEY
from tests.ops.test_device_cmd import _online as acking_device
from tests.ops.week import FIRST, FLEET, FLEET_ORDER, fill
from tests.ota.conftest import TICK_S, release, rollout, spawn, wait_state
from tests.ota.fleet import Behaviour, Fleet

TOKEN_KEY = "picofleet.operator_token"  # dash.js keeps the token under this key
ORDER = ["soil_moisture_pct", "pump_on", "battery_charge", "free_mem_bytes"]
NO_SIDEWAYS = "return document.documentElement.scrollWidth <= window.innerWidth"


@pytest.fixture(autouse=True)
def _quiet_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fast OTA announcer; no analytics job, so alerts change only by the operator's hand.
    monkeypatch.setenv("PICOFLEET_OTA_TICK_S", TICK_S)
    monkeypatch.setenv("PICOFLEET_ANALYTICS_ENABLED", "false")


@pytest.fixture
async def api(hub: RunningHub) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {hub.keys.operator_token}"}
    async with httpx.AsyncClient(base_url=hub.http, headers=headers, timeout=30) as c:
        yield c


async def _type_token(browser: Browser, token: str) -> None:
    """Type the token into the header's prompt, as an operator does once per tab."""
    await browser.js(
        "window.prompt = () => arguments[0]; document.getElementById('token').click();", token
    )
    assert await browser.js(f"return sessionStorage.getItem('{TOKEN_KEY}')") == token


async def _both(browser: Browser, name: str, selector: str) -> None:
    """Screenshots at desktop and phone width with ``selector`` in view; no sideways scroll."""
    for (width, height), suffix in ((DESKTOP, "desktop"), (PHONE, "phone")):
        await browser.size(width, height)
        await browser.js(
            "document.querySelector(arguments[0]).scrollIntoView({block: 'center'})", selector
        )
        assert await browser.js(NO_SIDEWAYS)
        await browser.screenshot(f"{name}-{suffix}.png")
    await browser.size(*DESKTOP)


async def _charts(browser: Browser, range_: str) -> dict[str, Any]:
    await browser.until(
        f"return document.getElementById('range-charts').dataset.ready === '{range_}'"
    )
    out: dict[str, Any] = await browser.js(
        "const c = window.picofleetCharts || {}; const o = {};"
        "for (const k of Object.keys(c)) { const {plot, ...rest} = c[k]; o[k] = rest; }"
        "return {order: Object.keys(c), charts: o,"
        " canvases: document.querySelectorAll('.uchart canvas').length,"
        " since: document.getElementById('range-charts').dataset.since};"
    )
    return out


async def test_overview_and_a_device_over_seven_days(
    hub: RunningHub, pool: asyncpg.Pool, browser: Browser
) -> None:
    week = await fill(pool, hub.topics)
    for width, height in (DESKTOP, PHONE):
        name = "desktop" if width == DESKTOP[0] else "phone"
        await browser.size(width, height)
        await browser.get(hub.http + "/")
        rows = await browser.until(
            "const r = [...document.querySelectorAll('#fleet tbody tr[data-key]')];"
            "return r.length === 3 && r.map(x => [x.dataset.key,"
            " x.querySelectorAll('svg.spark polyline').length]);"
        )
        # Every device with its last day's soil moisture as a sparkline.
        assert sorted(rows) == [[k, 1] for k in sorted(FLEET)]
        fleet = await _charts(browser, "1d")
        assert fleet["order"] == FLEET_ORDER  # soil moisture first, free memory last
        assert fleet["charts"]["soil_moisture_pct"]["devices"] == sorted(FLEET)
        assert fleet["canvases"] == len(FLEET_ORDER)
        assert (
            await browser.js("return document.querySelector('[data-alerts-open]').textContent")
            == "1"
        )
        assert await browser.js(NO_SIDEWAYS)
        await browser.screenshot(f"overview-{name}.png")

        await browser.get(f"{hub.http}/devices/{FIRST}")
        dev = await _charts(browser, "7d")
        since = datetime.fromisoformat(dev["since"])
        soil = dev["charts"]["soil_moisture_pct"]
        hours = await pool.fetchval(
            "SELECT count(*) FROM rollup_hourly"
            " WHERE device_id = $1 AND series = 'soil_moisture_pct'"
            " AND hour >= date_trunc('hour', $2::timestamptz, 'UTC')",
            week.ids[FIRST],
            since,
        )
        assert soil["points"] == [hours] and hours > 150  # one point per rolled-up hour
        assert soil["gaps"] == [1]  # the six silent hours
        assert soil["threshold"] == 15.0 and soil["step"] is False
        assert dev["charts"]["pump_on"]["step"] is True
        assert soil["markers"] == 4  # two reboots, one install, one alert
        assert dev["order"] == ORDER and dev["canvases"] == len(ORDER)
        # Relative marker times, the exact time on hover.
        marks = await browser.js(
            "return [...document.querySelectorAll('ul.markers time')]"
            ".map(t => [t.textContent, t.title]);"
        )
        assert len(marks) == 4 and all(
            t.endswith("ago") and title.endswith("Z") for t, title in marks
        )
        assert await browser.js(NO_SIDEWAYS)
        await browser.screenshot(f"device-7d-{name}.png")

    # Another range reads the raw facts.
    await browser.js("document.querySelector('.ranges button[data-range=\"1h\"]').click()")
    hour = await _charts(browser, "1h")
    assert hour["charts"]["soil_moisture_pct"]["points"][0] >= 5


async def test_pump_command_and_alert_acknowledged(
    hub: RunningHub, pool: asyncpg.Pool, browser: Browser
) -> None:
    week = await fill(pool, hub.topics)
    dev = await acking_device(hub, pool)
    try:
        await browser.size(*DESKTOP)
        await browser.get(f"{hub.http}/devices/{ACKING_KEY}")
        # A wrong token: refused, nothing sent, and forgotten so the next click asks again.
        await _type_token(browser, "not-the-token")
        await browser.js("document.querySelector('button[data-action=pump]').click()")
        refused = await browser.until(
            "const o = document.getElementById('cmd-result');"
            "return o.dataset.status === '403' && o.textContent;"
        )
        assert refused == "token refused (403); type it again" and dev.commands == []
        assert await browser.js(f"return sessionStorage.getItem('{TOKEN_KEY}')") is None

        token = hub.keys.operator_token
        await browser.js("window.prompt = () => arguments[0]", token)
        await browser.js("document.querySelector('button[data-action=pump]').click()")
        result = await browser.until(
            "const o = document.getElementById('cmd-result');"
            "return o.dataset.status === '200' && o.textContent;"
        )
        assert result == f"pump acked by {ACKING_KEY}: ok (done)"
        assert dev.commands[-1]["cmd"] == "pump" and dev.commands[-1]["seconds"] == 5
        acks = await pool.fetchval(
            "SELECT count(*) FROM raw_record WHERE topic = $1 AND body -> 'ack' ->> 'cmd' = 'pump'",
            dev.status_topic,
        )
        assert acks == 1
        await _both(browser, "pump-acked", "#commands")
    finally:
        await asyncio.to_thread(dev.close)

    await browser.get(hub.http + "/")  # the token is kept for the tab
    assert await browser.js(f"return sessionStorage.getItem('{TOKEN_KEY}')") == token
    assert await browser.js(f"return !!document.querySelector('#alert-{week.alert_id} button')")
    await browser.js(f"document.querySelector('#alert-{week.alert_id} button').click()")
    await browser.until(
        "return document.querySelector('[data-alerts-acknowledged]')?.textContent === '1'"
    )
    assert (
        await browser.js("return document.querySelector('[data-alerts-open]').textContent") == "0"
    )
    row = await pool.fetchrow("SELECT state, acked_at FROM alert WHERE id = $1", week.alert_id)
    assert row["state"] == "open" and row["acked_at"] is not None
    await _both(browser, "alert-acked", "#alerts")
    # The token went in a header only: no request URL carries it.
    urls = await browser.js("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and not any(hub.keys.operator_token in u for u in urls)


async def _click(browser: Browser, rollout_id: int, action: str) -> list[str]:
    """Click a rollout's button; [HTTP status, what the page says]."""
    btn = f"#rollout-{rollout_id} button[data-action={action}]"
    await browser.until(f"const b = document.querySelector('{btn}'); return !!b && !b.disabled")
    await browser.js(
        "const o = document.getElementById('rollouts-result'); o.dataset.status = '';"
        f"document.querySelector('{btn}').click()"
    )
    shown: list[str] = await browser.until(
        "const o = document.getElementById('rollouts-result');"
        "return o.dataset.status && o.dataset.status !== 'pending'"
        " && [o.dataset.status, o.textContent];"
    )
    return shown


async def _shown_state(browser: Browser, rollout_id: int, state: str) -> None:
    await browser.until(
        f"return document.getElementById('rollout-{rollout_id}')?.dataset.state === '{state}'"
    )


async def test_halted_rollout_buttons(
    hub: RunningHub, pool: asyncpg.Pool, browser: Browser, api: httpx.AsyncClient
) -> None:
    signer = init_keys(hub.settings.data_path)
    fleet = Fleet(
        port=hub.mqtt_port, keys=hub.keys, topics=hub.topics, public_key=signer.public_raw
    )
    try:
        await spawn(
            fleet, pool, ["AI-OTA01", "AI-OTA02", "AI-OTA03"], behaviour=Behaviour.BOOT_LOOP
        )
        await release(api, "1.0.0")
        await release(api, "1.1.0")
        ro = await rollout(
            api, version="1.1.0", waves=[100], soak_s=1, timeout_s=20, max_failure_rate=0.2
        )
        await wait_state(pool, ro["id"], "halted", timeout=60)

        await browser.size(*DESKTOP)
        await browser.get(hub.http + "/")
        await _type_token(browser, hub.keys.operator_token)
        await browser.js("window.confirm = () => true")  # the rollback button asks first
        await _shown_state(browser, ro["id"], "halted")
        enabled = await browser.js(
            f"return [...document.querySelectorAll('#rollout-{ro['id']} button[data-action]')]"
            ".map(b => [b.dataset.action, !b.disabled]);"
        )
        # A halted rollout can only be rolled back (the OTA area answers 409 to the rest).
        assert enabled == [
            ["pause", False],
            ["resume", False],
            ["abort", False],
            ["rollback", True],
        ]
        await _both(browser, "rollout-halted", f"#rollout-{ro['id']}")

        status, _ = await _click(browser, ro["id"], "rollback")
        assert status == "201"
        assert (await pool.fetchrow("SELECT state FROM ota_rollout WHERE id = $1", ro["id"]))[
            "state"
        ] == "rolled_back"
        back = await pool.fetch(
            "SELECT version, state FROM ota_rollout WHERE kind = 'rollback' AND id > $1", ro["id"]
        )
        assert [(r["version"]) for r in back] == ["1.0.0"]
        await _shown_state(browser, ro["id"], "rolled_back")
        await _both(browser, "rollout-rolled-back", f"#rollout-{ro['id']}")
    finally:
        await asyncio.to_thread(fleet.stop)

    # With the boards gone, a new rollout stays running: pause, resume, abort from the page.
    await release(api, "1.2.0")
    ro2 = await rollout(api, version="1.2.0", waves=[50, 100], timeout_s=600)
    await browser.get(hub.http + "/")
    # Rollback acts on a device type's latest fleet rollout: only that one offers it.
    with_rollback = await browser.js(
        "return [...document.querySelectorAll('.rollout')]"
        ".filter(r => r.querySelector('button[data-action=rollback]')).map(r => r.id);"
    )
    assert with_rollback == [f"rollout-{ro2['id']}"]
    for action, state in (("pause", "paused"), ("resume", "running"), ("abort", "aborted")):
        shown = ["200", f"rollout {ro2['id']} {action}: now {state}"]
        assert await _click(browser, ro2["id"], action) == shown
        assert (
            await pool.fetchval("SELECT state FROM ota_rollout WHERE id = $1", ro2["id"]) == state
        )
        await _shown_state(browser, ro2["id"], state)
        if action == "pause":
            await _both(browser, "rollout-paused", f"#rollout-{ro2['id']}")
