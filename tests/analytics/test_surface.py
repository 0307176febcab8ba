"""The analytics area inside a running hub (MQTT in, alerts out, HTTP) and its CLI."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import structlog
import typer
from typer.testing import CliRunner

from picofleet.analytics import AnalyticsSettings, evaluate
from picofleet.analytics.cli import parse_time, register
from picofleet.core.command import CommandError
from picofleet.core.credentials import OPERATOR_USER
from picofleet.core.topics import Kind
from tests.analytics.conftest import MONTH, Feed
from tests.conftest import RunningHub
from tests.helpers import Client, wait_for


@pytest.fixture
def fast_analytics(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The hub's analytics job every 0.2 s (set before the hub fixture starts)."""
    monkeypatch.setenv("PICOFLEET_ANALYTICS_INTERVAL_S", "0.2")
    monkeypatch.setenv("PICOFLEET_ANALYTICS_SETTLE_S", "0")
    yield


async def test_hub_announces_alerts_and_serves_rollups(
    fast_analytics: None, hub: RunningHub
) -> None:
    key = "AI-HUBBAT1"
    op = Client(hub.mqtt_port, OPERATOR_USER, hub.keys.role_password(OPERATOR_USER))
    dev = Client(hub.mqtt_port, key, hub.keys.device_password(key))
    assert await asyncio.to_thread(op.connect) and await asyncio.to_thread(dev.connect)
    await asyncio.to_thread(op.subscribe, hub.topics.alert("#"))
    now = int(datetime.now(UTC).timestamp())

    async def battery(seq: int, pct: float) -> None:
        body = {
            "v": 1,
            "seq": seq,
            "ts": now + seq,
            "readings": [{"type": "battery_charge", "value": pct}],
        }
        await asyncio.to_thread(
            dev.publish, hub.topics.device(key, Kind.TELEMETRY), json.dumps(body)
        )

    async def heard(n: int) -> list[dict[str, Any]]:
        async def check() -> list[dict[str, Any]] | None:
            msgs = [json.loads(p) for _, p in op.messages]
            return msgs if len(msgs) >= n else None

        return await wait_for(check, timeout=20)

    await battery(1, 9.5)
    (opened,) = await heard(1)
    assert (opened["kind"], opened["device"], opened["state"]) == ("battery_low", key, "open")
    await battery(2, 90.0)
    closed = (await heard(2))[1]
    assert (closed["id"], closed["state"]) == (opened["id"], "closed")
    await asyncio.sleep(0.6)  # a few more cycles: nothing new is announced
    assert len(op.messages) == 2
    op.close()
    dev.close()

    async with httpx.AsyncClient(base_url=hub.http) as http:
        alerts = (await http.get("/api/alerts")).json()
        assert [(a["id"], a["state"]) for a in alerts] == [(opened["id"], "closed")]
        assert (await http.get("/api/alerts", params={"state": "open"})).json() == []
        hourly = (
            await http.get("/api/stats/hourly", params={"device": key, "type": "battery_charge"})
        ).json()
        assert [(h["n"], h["min"], h["max"], h["avg"]) for h in hourly] in (
            [(2, 9.5, 90.0, 49.75)],
            [(1, 9.5, 9.5, 9.5), (1, 90.0, 90.0, 90.0)],  # the readings straddled an hour
        )
        daily = (await http.get("/api/stats/daily", params={"device": key})).json()
        assert min(d["battery_min"] for d in daily) == 9.5
        assert daily[0]["watering_l"] is None
        url = f"/api/stats/flow/{key}"
        assert (await http.put(url, json={"l_per_min": 2.0})).status_code == 401
        auth = {"Authorization": "Bearer wrong"}
        assert (await http.put(url, json={"l_per_min": 2.0}, headers=auth)).status_code == 403
        auth = {"Authorization": f"Bearer {hub.keys.operator_token}"}
        r = await http.put(url, json={"l_per_min": 2.0}, headers=auth)
        assert r.status_code == 200, r.text
        r = await http.put("/api/stats/flow/AI-NOBODY", json={"l_per_min": 2.0}, headers=auth)
        assert r.status_code == 404
        etl = (await http.get("/api/stats/etl")).json()
        assert etl["last_id"] >= 2 and etl["pending_facts"] == 0
        assert etl["open_alerts"] == 0


def test_parse_time() -> None:
    now = datetime(2026, 3, 10, 12, tzinfo=UTC)
    assert parse_time("90m", now=now) == now - timedelta(minutes=90)
    assert parse_time("7d", now=now) == now - timedelta(days=7)
    assert parse_time("2026-03-01") == datetime(2026, 3, 1, tzinfo=UTC)
    assert parse_time("2026-03-01T05:00:00+02:00") == datetime(2026, 3, 1, 3, tzinfo=UTC)
    with pytest.raises(CommandError):
        parse_time("yesterday")


async def test_cli(db_url: str, pool: asyncpg.Pool, feed: Feed) -> None:
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    env = {"PICOFLEET_DATABASE_URL": db_url, "PICOFLEET_ANALYTICS_SETTLE_S": "0"}

    handlers = logging.getLogger().handlers[:]

    async def cli(*args: str, ok: bool = True) -> Any:
        try:
            result = await asyncio.to_thread(runner.invoke, app, list(args), env=env)
        finally:
            # The command configured logging onto the runner's stderr, which is now closed.
            logging.getLogger().handlers[:] = handlers
            structlog.reset_defaults()
            structlog.configure(cache_logger_on_first_use=False)
        if ok:
            assert result.exit_code == 0, (args, result.stdout, result.exception)
        return result

    at = MONTH + timedelta(hours=5, minutes=30)
    await feed.readings("AI-CLI0001", at, {"soil_moisture_pct": 12.5, "pump_runtime_s": 20})
    await feed.readings("AI-CLI0001", at + timedelta(minutes=5), {"soil_moisture_pct": 14.5})
    out = (await cli("etl", "run")).stdout
    assert out.startswith("facts 3, device-hours 1 (changed 2, removed 0)")
    assert "facts 0," in (await cli("etl", "run")).stdout
    assert "changed 0" in (await cli("etl", "run", "--since", "2026-03-01")).stdout

    lines = (
        await cli(
            "stats",
            "hourly",
            "--since",
            "2026-03-01",
            "--until",
            "2026-03-02",
            "--type",
            "soil_moisture_pct",
            "--json",
        )
    ).stdout.splitlines()
    (row,) = [json.loads(line) for line in lines]
    assert (row["device"], row["n"], row["avg"]) == ("AI-CLI0001", 2, 13.5)
    table = await cli("stats", "hourly", "--since", "2026-03-01", "--until", "2026-03-02")
    assert "soil_moisture_pct" in table.stdout and "pump_runtime_s" in table.stdout

    assert "1.5 l/min" in (await cli("etl", "flow", "AI-CLI0001", "1.5")).stdout
    bad = await cli("etl", "flow", "AI-NOBODY", "1.5", ok=False)
    assert isinstance(bad.exception, CommandError)
    lines = (
        await cli("stats", "daily", "--since", "2026-03-01", "--until", "2026-03-02", "--json")
    ).stdout.splitlines()
    (day,) = [json.loads(line) for line in lines]
    assert (day["pump_runtime_s"], day["watering_l"], day["moisture_min"]) == (20.0, 0.5, 12.5)

    await evaluate(pool, AnalyticsSettings(), now=at + timedelta(minutes=25))
    (alert,) = [json.loads(x) for x in (await cli("alerts", "--json")).stdout.splitlines()]
    assert (alert["kind"], alert["state"]) == ("device_offline", "open")  # silent since 05:35
    assert "device_offline" in (await cli("alerts", "--state", "open")).stdout
    assert (await cli("alerts", "--state", "closed", "--json")).stdout == ""

    status = json.loads((await cli("etl", "status", "--json")).stdout)
    assert (status["pending_facts"], status["hourly_rows"], status["open_alerts"]) == (0, 2, 1)
    assert isinstance((await cli("etl", "prune", ok=False)).exception, CommandError)
    assert "pruned 0 facts" in (await cli("etl", "prune", "--days", "3650")).stdout
