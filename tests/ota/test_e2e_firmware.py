"""End to end: the real ``pico_w`` firmware (boot.py, main.py, the updater) on CPython against
the real hub. Each virtual Pico W runs from its own flash directory in a thread
(``picofleet.sim.firmware``), talks MQTT to the hub's broker, downloads the artifact from the
hub's HTTP server, verifies it with its own Ed25519 code, applies it and resets."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from pi_server.ota.keys import Signer
from picofleet.settings import Settings
from picofleet.sim.firmware import FirmwareFleet, release_main
from tests.conftest import RunningHub
from tests.helpers import wait_for
from tests.ota.conftest import member_states, picofleet_json, wait_state

N = 3
WDT_SCALE = 0.25  # a 2 s watchdog: a crashing release resets quickly


def fleet_for(hub: RunningHub, signer: Signer, root: Path, prefix: str) -> FirmwareFleet:
    return FirmwareFleet(
        n=N,
        mqtt_host="127.0.0.1",
        mqtt_port=hub.mqtt_port,
        http_base=hub.http,
        keys=hub.keys,
        ota_pubkey=signer.public_raw,
        telemetry_interval_s=1,
        root=root,
        key_prefix=prefix,
        wdt_scale=WDT_SCALE,
    )


async def online(pool: asyncpg.Pool, fleet: FirmwareFleet) -> None:
    """Every device provisioned itself and reported its firmware."""
    keys = [d.key for d in fleet.devices]

    async def check() -> bool:
        n = await pool.fetchval(
            "SELECT count(*) FROM device WHERE device_key = ANY($1)"
            " AND provisioned_at IS NOT NULL AND firmware = '1.0.0'",
            keys,
        )
        return bool(n == len(keys))

    await wait_for(check, timeout=60, interval=0.2)


async def release_and_roll_out(
    settings: Settings, tmp_path: Path, version: str, waves: str, *, crash: bool = False
) -> int:
    main = tmp_path / f"main-{version}.py"
    main.write_bytes(release_main(version, crash=crash))
    await picofleet_json(settings, "ota", "release", str(main), "--version", version)
    ro = await picofleet_json(
        settings, "ota", "rollout", version, "--waves", waves, "--soak-s", "1", "--timeout-s", "90"
    )
    return int(ro["id"])


async def test_real_firmware_fleet_installs_a_release(
    hub: RunningHub, signer: Signer, pool: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    async with fleet_for(hub, signer, tmp_path / "flash", "E2E") as fleet:
        await online(pool, fleet)
        old = fleet[0].board.fs.read_bytes("main.py")
        rid = await release_and_roll_out(settings, tmp_path, "1.1.0", "34,100")
        await wait_state(pool, rid, "completed", timeout=120)

        status = await picofleet_json(settings, "ota", "status", "1.1.0")
        states = {d["device_key"]: (d["state"], d["reported_state"]) for d in status["devices"]}
        assert states == {d.key: ("booted_ok", "booted_ok") for d in fleet.devices}
        for d in fleet.devices:
            assert d.version == "1.1.0", d.console[-20:]
            assert d.board.fs.read_bytes("main.py.bak") == old  # the previous app is kept
            assert d.read_json("ota.json")["pending"] is None
            assert d.repl is None, d.repl
        # The device's own reports, in order, one per step, in the deploy log.
        for d in fleet.devices:
            rows = await pool.fetch(
                "SELECT state FROM deploy_event WHERE device_key = $1 AND source = 'ota'"
                " AND version = '1.1.0' AND NOT coalesce((detail->>'stale')::bool, false)"
                " ORDER BY seq",
                d.key,
            )
            got = [r["state"] for r in rows]
            assert got == ["received", "downloading", "verified", "applied", "booted_ok"], got


async def test_real_firmware_crashing_release_rolls_back_and_halts(
    hub: RunningHub, signer: Signer, pool: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    async with fleet_for(hub, signer, tmp_path / "flash", "E2X") as fleet:
        await online(pool, fleet)
        rid = await release_and_roll_out(settings, tmp_path, "1.2.0", "30,100", crash=True)
        halted = await wait_state(pool, rid, "halted", timeout=120)
        assert "rolled back 1" in halted["reason"]

        states = await member_states(pool, rid)
        first = [k for k, s in states.items() if s == "rolled_back"]
        assert len(first) == 1 and sorted(states.values()) == ["rolled_back", "skipped", "skipped"]
        by_key = {d.key: d for d in fleet.devices}

        async def back_on_old() -> bool:
            return by_key[first[0]].version == "1.0.0"

        await wait_for(back_on_old, timeout=30)
        reason = await pool.fetchval(
            "SELECT reason FROM ota_rollout_device WHERE rollout_id = $1 AND device_key = $2",
            rid,
            first[0],
        )
        assert reason == "boot_loop"
        # The later wave never heard of 1.2.0: no report, old app, nothing downloaded.
        for key, d in by_key.items():
            if key in first:
                continue
            assert d.version == "1.0.0"
            assert not d.board.fs.exists("ota.part")
            n = await pool.fetchval(
                "SELECT count(*) FROM deploy_event WHERE device_key = $1 AND source = 'ota'", key
            )
            assert n == 0
