"""Rotating the fleet secret: ``picofleet creds rotate [--grace HOURS]``.

Devices holding the old secret's password or provisioning key keep working until the grace
period ends, on amqtt and on a managed Mosquitto; then they are refused. The hub's and the
operator's own credentials change at once. The end of the grace is a stored timestamp the
tests set (``end_grace``), so nothing waits for a clock.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from picofleet.broker import access
from picofleet.core.credentials import (
    HUB_USER,
    OPERATOR_USER,
    PREVIOUS_SECRET_FILE,
    RENEWED_FILE,
    SECRET_FILE,
    FleetKeys,
    load_fleet_keys,
    load_fleet_secret,
)
from picofleet.core.settings import Settings
from picofleet.core.topics import Kind, Topics
from picofleet.security.rotation import (
    RotationError,
    end_grace,
    mark_renewed,
    rotate_fleet_secret,
)
from tests.conftest import mosquitto_available, need, running_hub
from tests.helpers import Client, new_hub_dir, run_cli, startup_body, wait_for


@pytest.fixture
def own_secret(settings: Settings) -> Settings:
    """The hub's settings with the fleet secret in the data dir (rotatable), not the env."""
    s = settings.model_copy(update={"provision_secret": None})
    load_fleet_secret(s)
    return s


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def connects(port: int, user: str, password: str) -> bool:
    c = Client(port, user, password, client_id=f"t-{uuid.uuid4().hex[:8]}")
    ok = await asyncio.to_thread(c.connect)
    if ok:
        await asyncio.to_thread(c.close)
    return ok


async def ingest_status(settings: Settings, body: dict[str, Any]) -> str:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.http_port}") as c:
        r = await c.post("/ingest", json=body)
    assert r.status_code == 200, r.text
    return str(r.json()[0]["status"])


# -- the files and the checks ------------------------------------------------------------------
def test_rotation_keeps_old_device_credentials_for_the_grace_only(own_secret: Settings) -> None:
    s = own_secret
    old = load_fleet_keys(s)
    dev = "AI-ROT001"
    umask = os.umask(0)  # the files must be private whatever the caller's umask
    try:
        done = rotate_fleet_secret(s, grace_hours=2)
    finally:
        os.umask(umask)
    for name in (SECRET_FILE, PREVIOUS_SECRET_FILE, RENEWED_FILE):
        assert mode(s.data_path / name) == 0o600, name
    assert done.expires_at - done.rotated_at == 2 * 3600 and not done.replaced_grace
    keys = load_fleet_keys(s)
    assert keys.secret != old.secret and keys.previous == old.secret

    # Devices: the old password and tokens pass, and so do the new ones.
    ts, nonce = int(time.time()), "0123456789abcdef"
    assert keys.check_password(dev, old.device_password(dev))
    assert keys.check_password(dev, keys.device_password(dev))
    assert keys.check_startup_token(dev, ts, nonce, old.device_startup_token(dev, ts, nonce))
    assert keys.check_startup_token(dev, ts, nonce, old.startup_token(dev, ts, nonce))
    assert keys.check_legacy_token(dev, old.legacy_token(dev))
    assert not keys.check_password(dev, old.device_password("AI-OTHER1"))
    # The hub's and the operator's own credentials move at once; credentials are issued new.
    for role in (HUB_USER, OPERATOR_USER):
        assert not keys.check_password(role, old.role_password(role))
        assert keys.check_password(role, keys.role_password(role))
    assert keys.operator_token != old.operator_token
    assert keys.device_password(dev) != old.device_password(dev)

    # The grace ends at the stored timestamp.
    assert end_grace(s) and not end_grace(s)
    after = load_fleet_keys(s)
    assert after.secret == keys.secret and after.grace_keys() is None
    assert not after.check_password(dev, old.device_password(dev))
    assert not after.check_startup_token(dev, ts, nonce, old.device_startup_token(dev, ts, nonce))
    assert not after.check_legacy_token(dev, old.legacy_token(dev))
    assert after.check_password(dev, keys.device_password(dev))
    # The expiry is also honoured by keys loaded while the grace ran.
    lapsed = FleetKeys(keys.secret, previous=old.secret, previous_until=time.time() - 1)
    assert not lapsed.check_password(dev, old.device_password(dev))


def test_a_second_rotation_ends_the_first_grace(own_secret: Settings) -> None:
    first = load_fleet_keys(own_secret)
    rotate_fleet_secret(own_secret, grace_hours=1)
    second = load_fleet_keys(own_secret)
    assert rotate_fleet_secret(own_secret, grace_hours=1).replaced_grace
    third = load_fleet_keys(own_secret)
    assert third.check_password("AI-X", second.device_password("AI-X"))
    assert not third.check_password("AI-X", first.device_password("AI-X"))
    rotate_fleet_secret(own_secret, grace_hours=0)
    assert load_fleet_keys(own_secret).grace_keys() is None  # --grace 0: no grace at all


def test_rotation_refuses_a_secret_from_the_environment(settings: Settings) -> None:
    with pytest.raises(RotationError, match="PICOFLEET_PROVISION_SECRET"):
        rotate_fleet_secret(settings)
    fresh = settings.model_copy(update={"provision_secret": None})
    with pytest.raises(RotationError, match="nothing to rotate"):
        rotate_fleet_secret(fresh)
    with pytest.raises(RotationError):
        rotate_fleet_secret(fresh, grace_hours=-1)


def test_cli_rotate_prints_no_secret(tmp_path: Path) -> None:
    data = tmp_path / "cli"

    def cli(*args: str) -> str:
        return run_cli(*args, data_dir=data, timeout=60, stderr=True)

    new_hub_dir(data)
    before = json.loads(cli("creds", "device", "AI-CLI002", "--json"))
    old_secret = (data / SECRET_FILE).read_text().strip()
    out = cli("creds", "rotate", "--grace", "1.5")
    new_secret = (data / SECRET_FILE).read_text().strip()
    assert new_secret != old_secret
    assert old_secret not in out and new_secret not in out and "accepted until" in out
    assert json.loads(cli("creds", "device", "AI-CLI002", "--json")) != before
    assert "1 device(s) marked renewed" in cli("creds", "renewed", "AI-CLI002")
    assert (data / RENEWED_FILE).read_text() == "AI-CLI002\n"
    assert "grace period ended" in cli("creds", "end-grace")
    assert "no grace period" in cli("creds", "end-grace")
    for name in (SECRET_FILE, PREVIOUS_SECRET_FILE, RENEWED_FILE):
        assert mode(data / name) == 0o600, name


# -- real brokers ----------------------------------------------------------------------------
async def test_grace_on_the_embedded_amqtt_hub(own_secret: Settings, pool: asyncpg.Pool) -> None:
    s, dev = own_secret, "AI-ROT002"
    old = load_fleet_keys(s)
    rotate_fleet_secret(s, grace_hours=1)
    new = load_fleet_keys(s)
    port = s.mqtt_port
    async with running_hub(s):
        assert await connects(port, dev, old.device_password(dev))
        assert await connects(port, dev, new.device_password(dev))
        assert not await connects(port, dev, "not-the-password")
        assert not await connects(port, OPERATOR_USER, old.role_password(OPERATOR_USER))
        assert await connects(port, OPERATOR_USER, new.role_password(OPERATOR_USER))
        assert await ingest_status(s, startup_body(old, dev)) == "provisioned"
        assert await ingest_status(s, startup_body(new, dev)) == "provisioned"
        # A device on the old password still delivers.
        c = Client(port, dev, old.device_password(dev))
        assert await asyncio.to_thread(c.connect)
        body = {"v": 1, "seq": 7, "readings": [{"type": "soil_moisture_pct", "value": 40.0}]}
        topic = Topics(s.topic_prefix).device(dev, Kind.TELEMETRY)
        await asyncio.to_thread(c.publish, topic, json.dumps(body).encode())
        await asyncio.to_thread(c.close)

        async def delivered() -> bool:
            q = "SELECT count(*) FROM processed_record WHERE seq = 7"
            return bool(await pool.fetchval(q) == 1)

        await wait_for(delivered)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.http_port}") as h:
            for token, status in ((old.operator_token, 403), (new.operator_token, 404)):
                r = await h.delete(
                    "/api/devices/AI-NONE01", headers={"Authorization": f"Bearer {token}"}
                )
                assert r.status_code == status  # no grace for the operator token

    end_grace(s)  # the stored end of the grace, as if the hours had passed
    async with running_hub(s):
        assert not await connects(port, dev, old.device_password(dev))
        assert await connects(port, dev, new.device_password(dev))
        assert await ingest_status(s, startup_body(old, dev)) == "unauthorized"
        assert await ingest_status(s, startup_body(new, dev)) == "provisioned"


async def test_grace_on_a_managed_mosquitto(
    own_secret: Settings, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mosquitto keeps one password per user: during the grace each device is listed with
    the password it holds (the old one until it is renewed or if it is new)."""
    need(mosquitto_available(), "mosquitto")
    monkeypatch.setattr(access, "POLICY_SYNC_S", 0.1)
    s = own_secret.model_copy(update={"broker": "mosquitto"})
    a, b, c = "AI-MOSQ0A", "AI-MOSQ0B", "AI-MOSQ0C"
    await pool.execute("INSERT INTO device (device_key) VALUES ($1), ($2)", a, c)
    old = load_fleet_keys(s)
    rotate_fleet_secret(s, grace_hours=1)
    new = load_fleet_keys(s)
    port = s.mqtt_port
    passwd = s.data_path / "mosquitto" / "passwd"
    async with running_hub(s):
        assert mode(passwd) == 0o600
        assert await connects(port, a, old.device_password(a))
        assert not await connects(port, a, new.device_password(a))
        assert await connects(port, c, old.device_password(c))
        assert await connects(s.hub_mqtt_port, HUB_USER, new.role_password(HUB_USER))
        assert not await connects(s.hub_mqtt_port, OPERATOR_USER, old.role_password(OPERATOR_USER))

        # A device first seen after the rotation never held the old secret.
        await pool.execute("INSERT INTO device (device_key) VALUES ($1)", b)

        async def b_admitted() -> bool:
            return await connects(port, b, new.device_password(b))

        await wait_for(b_admitted)
        assert not await connects(port, b, old.device_password(b))

        # A re-provisioned device is marked renewed and moves to its new password.
        mark_renewed(s, [a])

        async def a_moved() -> bool:
            return await connects(port, a, new.device_password(a))

        await wait_for(a_moved)
        assert not await connects(port, a, old.device_password(a))
        assert await connects(port, c, old.device_password(c))

    end_grace(s)
    async with running_hub(s):
        for key in (a, b, c):
            assert await connects(port, key, new.device_password(key)), key
            assert not await connects(port, key, old.device_password(key)), key
