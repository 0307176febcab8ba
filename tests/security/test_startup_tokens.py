"""Startup tokens against a running hub: every forgery is refused, counted and alerted.

Replay, reused nonce, skewed clock, wrong serial, truncated token, legacy token with legacy
switched off, and plain garbage: each is an ``ingest_error`` with code ``startup_auth_error``,
a line in ``/metrics``, and a message on ``{prefix}/ingest/errors``; none provisions.
"""

from __future__ import annotations

import json
import time
from typing import Any

import asyncpg
import httpx
import pytest

from picofleet.core.credentials import FleetKeys
from picofleet.core.settings import Settings
from picofleet.core.topics import Kind
from tests.conftest import RunningHub
from tests.helpers import metric, startup_body, wait_for
from tests.security.peers import Peer

KEY, OTHER = "AI-BOOT001", "AI-BOOT002"
CODE = "startup_auth_error"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """This module's hub has the legacy serial-only token switched off."""
    return settings.model_copy(update={"legacy_token_enabled": False})


def startup(keys: FleetKeys, serial: str = KEY, **over: Any) -> dict[str, Any]:
    return startup_body(keys, serial, **{"device_type": "pico_w", "clock_drift_s": 0, **over})


def forgeries(keys: FleetKeys) -> list[tuple[str, dict[str, Any]]]:
    now = int(time.time())
    good = startup(keys)
    nonce = "feedfacecafebeef"
    return [
        ("good", good),
        ("replay", dict(good)),
        ("reused nonce", startup(keys, nonce=good["nonce"], ts=now + 1)),
        ("skewed clock (past)", startup(keys, ts=now - 3600)),
        ("skewed clock (future)", startup(keys, ts=now + 900)),
        ("drift claim beyond the cap", startup(keys, ts=now - 3 * 3600, clock_drift_s=10**9)),
        ("wrong serial's token", startup(keys, token_serial=OTHER, nonce=nonce)),
        ("truncated token", dict(startup(keys), provision_token=good["provision_token"][:32])),
        ("empty token", dict(startup(keys), provision_token="")),
        ("token of another nonce", dict(startup(keys), provision_token=good["provision_token"])),
        ("oversized token", dict(startup(keys), provision_token="ab" * 5000)),
        ("non-hex token", dict(startup(keys), provision_token="zz" * 32)),
        (
            "legacy token, legacy off",
            {
                "event_type": "device_startup",
                "serial": KEY,
                "provision_token": keys.legacy_token(KEY),
            },
        ),
        ("fleet operator token", dict(startup(keys), provision_token=keys.operator_token)),
        ("integer timestamp as text", dict(startup(keys), timestamp=str(now))),
        ("short nonce", startup(keys, nonce="abc")),
    ]


async def test_forged_startups_are_refused_counted_and_alerted(
    hub: RunningHub, pool: asyncpg.Pool
) -> None:
    cases = forgeries(hub.keys)
    watcher = Peer(hub.mqtt_port, "operator", hub.keys.role_password("operator"))
    dev = Peer(hub.mqtt_port, KEY, hub.keys.device_password(KEY))
    try:
        assert await watcher.connect() and await dev.connect()
        assert await watcher.subscribe(hub.topics.ingest_errors)
        topic = hub.topics.device(KEY, Kind.STARTUP)
        for _, body in cases:
            await dev.publish(topic, json.dumps(body).encode())

        async def all_stored() -> bool:
            n = await pool.fetchval("SELECT count(*) FROM raw_record WHERE topic = $1", topic)
            return int(n) == len(cases)

        await wait_for(all_stored, timeout=15)
        rows = await pool.fetch(
            "SELECT r.id, e.code, e.detail FROM raw_record r"
            " LEFT JOIN ingest_error e ON e.raw_id = r.id WHERE r.topic = $1 ORDER BY r.id",
            topic,
        )
        got = {name: r["code"] for (name, _), r in zip(cases, rows, strict=True)}
        assert got == {name: (None if name == "good" else CODE) for name, _ in cases}
        # Nothing in a refusal gives the expected token away.
        for (_, body), r in zip(cases, rows, strict=True):
            if r["detail"] and isinstance(body.get("timestamp"), int):
                expect = hub.keys.device_startup_token(
                    KEY, body["timestamp"], body.get("nonce", "")
                )
                assert expect not in r["detail"]
        refused = len(cases) - 1

        async def alerted() -> bool:
            return len(watcher.got(hub.topics.ingest_errors)) >= refused

        await wait_for(alerted)
        alerts = [json.loads(p) for p in watcher.got(hub.topics.ingest_errors)]
        assert [a["code"] for a in alerts] == [CODE] * refused
        assert {a["device"] for a in alerts} == {KEY}
        assert {a["raw_id"] for a in alerts} == {r["id"] for r in rows[1:]}

        async with httpx.AsyncClient(base_url=hub.http) as client:
            metrics = (await client.get("/metrics")).text
        assert metric(metrics, "picofleet_messages_rejected_total", code=CODE) == refused

        dev_row = await pool.fetchrow(
            "SELECT provisioned_at, firmware FROM device WHERE device_key = $1", KEY
        )
        assert dev_row["provisioned_at"] is not None  # by the one good startup
        nonces = await pool.fetchval("SELECT count(*) FROM provision_nonce WHERE serial = $1", KEY)
        assert nonces == 1
    finally:
        watcher.close()
        dev.close()


async def test_startup_for_another_serial_is_refused(hub: RunningHub, pool: asyncpg.Pool) -> None:
    """A device cannot provision another: on MQTT its topic pins the serial; on HTTP the token
    must be the other device's own."""
    dev = Peer(hub.mqtt_port, KEY, hub.keys.device_password(KEY))
    try:
        assert await dev.connect()
        body = startup(hub.keys, serial=OTHER)  # a perfectly valid token of OTHER
        await dev.publish(hub.topics.device(KEY, Kind.STARTUP), json.dumps(body).encode())
    finally:
        dev.close()
    forged = startup(hub.keys, serial=OTHER, token_serial=KEY)
    async with httpx.AsyncClient(base_url=hub.http) as client:
        r = await client.post("/ingest", content=json.dumps(forged).encode())
    assert [x["status"] for x in r.json()] == ["unauthorized"]

    async def two() -> bool:
        return int(await pool.fetchval("SELECT count(*) FROM ingest_error")) == 2

    await wait_for(two)
    codes = [r["code"] for r in await pool.fetch("SELECT code FROM ingest_error ORDER BY raw_id")]
    assert codes == ["device_mismatch", CODE]
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM device WHERE device_key = $1 AND provisioned_at IS NOT NULL",
            OTHER,
        )
        == 0
    )
