"""OTA end to end, executed by the real interpreter: MicroPython boards
(``picofleet.sim.board``: the unmodified ``pico_w`` files, real sockets, a watchdog that
resets, a flash directory) against the real hub. Releases and rollouts go through the
operator surface (``picofleet ota ...``, the HTTP API, the picofleet.ota API); what counts
is the hub's deploy log and device rows in PostgreSQL and the files in each board's flash."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from picofleet.core.credentials import FleetKeys
from picofleet.core.settings import Settings
from picofleet.core.signing import Signer
from picofleet.ota import rollouts
from picofleet.sim.board import available
from tests.conftest import RunningHub, need, running_hub
from tests.firmware.artifacts import CutProxy, release_main
from tests.firmware.board.kit import until
from tests.firmware.ota_kit import (
    Pico,
    firmware,
    fleet,
    members,
    online,
    reports,
    settle,
    states,
    status_fw,
    wait_report,
    wait_rollout,
)
from tests.ota.conftest import picofleet_json

OLD = release_main("1.0.0")  # what the boards run when flashed
FLOW = ["received", "downloading", "verified", "applied", "booted_ok"]


@pytest.fixture(autouse=True)
def _board_available() -> None:
    need(available(), "node + npm @micropython/micropython-webassembly-pyscript")


async def release(settings: Settings, tmp_path: Path, version: str, data: bytes) -> None:
    """``picofleet ota release``, as an operator runs it."""
    path = tmp_path / f"main-{version}.py"
    path.write_bytes(data)
    await picofleet_json(settings, "ota", "release", str(path), "--version", version)


async def cli_rollout(settings: Settings, version: str, *args: str) -> int:
    """``picofleet ota rollout VERSION ...`` with test timings; the rollout's id."""
    out = await picofleet_json(
        settings, "ota", "rollout", version, "--soak-s", "1", "--min-devices", "1", *args
    )
    return int(out["id"])


async def api_rollout(
    pool: asyncpg.Pool, settings: Settings, signer: Signer, version: str, **kw: Any
) -> int:
    """A rollout through the picofleet.ota API; ``settings`` decide the artifact URL the
    signed manifest carries (a proxy's port instead of the hub's)."""
    args: dict[str, Any] = {"waves": [100], "soak_s": 1, "timeout_s": 300, "min_devices": 1}
    args.update(kw)
    async with pool.acquire() as conn, conn.transaction():
        out = await rollouts.create_rollout(
            conn, settings=settings, signer=signer, version=version, device_type="pico_w", **args
        )
    return int(out["id"])


async def runs(pool: asyncpg.Pool, hub: RunningHub, key: str, version: str) -> bool:
    """The board's last status names ``version``: that main.py booted and got online."""
    return await status_fw(pool, hub.topics, key) == version


def assert_installed(p: Pico, new: bytes, old: bytes = OLD) -> None:
    """The new main.py in place, the old one kept, nothing half done left in flash."""
    assert p.read("main.py") == new, p.console()
    assert p.read("main.py.bak") == old, p.console()
    leftovers = {"ota.part", "main.py.bak.tmp", "ota.json.tmp"} & {f.name for f in p.root.iterdir()}
    assert not leftovers, leftovers
    assert p.ota_state().get("pending") is None, p.ota_state()


async def test_release_reaches_every_board_and_a_cut_download_resumes(
    hub: RunningHub, signer: Signer, pool: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    """`ota release` + a rollout to three boards whose first download is reset after 6 KB:
    each resumes with Range where its ota.part ends, checks size, sha256 and signature,
    swaps main.py (keeping main.py.bak), boots it on trial, confirms; the rollout completes."""
    new = release_main("1.1.0", pad_to=20_000)
    keys = ["OTA-E2E-1", "OTA-E2E-2", "OTA-E2E-3"]
    async with CutProxy(hub.settings.http_port, after=6_000, cuts=len(keys)) as proxy:
        with fleet(tmp_path / "flash", hub, signer, keys) as picos:
            await online(pool, picos)
            await release(settings, tmp_path, "1.1.0", new)
            via_proxy = settings.model_copy(update={"http_port": proxy.port})
            # A cut download is retried, not failed: the default threshold must not halt.
            rid = await api_rollout(pool, via_proxy, signer, "1.1.0")
            await wait_rollout(pool, rid, "completed", picos, timeout=150)

            assert await members(pool, rid) == dict.fromkeys(keys, ("booted_ok", None))
            for p in picos:
                assert_installed(p, new)
                assert await firmware(pool, p.key) == "1.1.0"
                assert p.board.resets() == ["machine.reset"], p.console()
                got = await states(pool, p.key)
                assert got == [
                    ("1.1.0", "received", None),
                    ("1.1.0", "downloading", None),
                    ("1.1.0", "downloading", "download_error"),
                    *[("1.1.0", s, None) for s in FLOW],
                ], got
                # the second download started where the part file ended, and said so
                resume = json.loads((await reports(pool, p.key))[4]["detail"]).get("detail")
                assert resume is not None and resume.startswith("resume at "), resume
                assert f"bytes={resume[10:]}-" in proxy.ranges, (resume, proxy.ranges)
    resumed = [r for r in proxy.ranges if r is not None]
    assert len(proxy.ranges) == 2 * len(keys) and len(resumed) == len(keys), proxy.ranges
    assert all(0 < int(r[6:-1]) <= 6_000 for r in resumed), resumed
    assert sorted(proxy.statuses) == [200] * len(keys) + [206] * len(keys), proxy.statuses


async def test_release_on_mosquitto(
    settings: Settings,
    keys: FleetKeys,
    signer: Signer,
    pool: asyncpg.Pool,
    tmp_path: Path,
    mosquitto_factory: Any,
) -> None:
    """The same through Mosquitto (generated config, ACL), release and rollout over HTTP."""
    devices = ["OTA-MQ-1", "OTA-MQ-2"]
    mosq = await mosquitto_factory(devices)
    s = settings.model_copy(update={"mqtt_url": f"mqtt://127.0.0.1:{mosq.hub_port}"})
    new = release_main("1.1.0", pad_to=12_000)
    async with running_hub(s, keys, embedded_broker=False) as hub:
        with fleet(tmp_path / "flash", hub, signer, devices, broker_port=mosq.port) as picos:
            await online(pool, picos)
            auth = {"Authorization": f"Bearer {keys.operator_token}"}
            async with httpx.AsyncClient(base_url=hub.http, headers=auth, timeout=60) as api:
                r = await api.post("/api/ota/releases", params={"version": "1.1.0"}, content=new)
                assert r.status_code == 201, r.text
                body = {"version": "1.1.0", "channel": "stable", "soak_s": 1, "min_devices": 1}
                r = await api.post("/api/ota/rollouts", json=body)
                assert r.status_code == 201, r.text
                rid = int(r.json()["id"])
            await wait_rollout(pool, rid, "completed", picos, timeout=120)
            for p in picos:
                assert_installed(p, new)
                assert await firmware(pool, p.key) == "1.1.0"
                assert await states(pool, p.key) == [("1.1.0", s, None) for s in FLOW]


async def test_crashing_release_rolls_back_after_its_trial_boots_and_halts(
    hub: RunningHub, signer: Signer, pool: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    """A main.py that raises at import: the first wave's board boots it MAX_BOOTS times (the
    watchdog resets it from the REPL), restores main.py.bak, reports rolled_back; the rollout
    halts and the later wave never downloads anything."""
    bad = release_main("1.2.0", kind="crash")
    keys = ["OTA-CRASH-1", "OTA-CRASH-2", "OTA-CRASH-3"]
    with fleet(tmp_path / "flash", hub, signer, keys) as picos:
        await online(pool, picos)
        await release(settings, tmp_path, "1.2.0", bad)
        rid = await cli_rollout(settings, "1.2.0", "--waves", "33,100")  # 1 board, then 2
        halted = await wait_rollout(pool, rid, "halted", picos, timeout=150)
        assert "rolled back 1" in halted["reason"], halted["reason"]

        got = await members(pool, rid)
        first = [k for k, (state, _) in got.items() if state == "rolled_back"]
        assert len(first) == 1, got
        assert sorted(got.values()) == [
            ("rolled_back", "boot_loop"),
            ("skipped", "halted"),
            ("skipped", "halted"),
        ], got
        by_key = {p.key: p for p in picos}
        p = by_key[first[0]]
        # reset to apply, then three trial boots that die at import and at the watchdog
        assert p.board.resets() == ["machine.reset"] + ["watchdog"] * 3, p.console()
        assert any("bad release" in line for line in p.board.lines()), p.console()
        assert p.read("main.py") == OLD and not p.exists("ota.part")
        st = p.ota_state()
        assert st["pending"] is None and st["bad"] == [hashlib.sha256(bad).hexdigest()], st
        assert await states(pool, p.key) == [
            *[("1.2.0", s, None) for s in FLOW[:-1]],
            ("1.2.0", "rolled_back", "boot_loop"),
        ]
        await until(p.board, lambda: runs(pool, hub, p.key, "1.0.0"), timeout=30)
        for key, other in by_key.items():
            if key == first[0]:
                continue
            assert other.read("main.py") == OLD and not other.exists("ota.part")
            assert await reports(pool, key) == []
            assert other.board.resets() == []


async def test_silent_release_is_rolled_back_by_the_trial_deadline(
    hub: RunningHub, signer: Signer, pool: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    """A main.py that runs, feeds the watchdog and never publishes: no watchdog or crash
    catches it. The trial deadline (config.json ota_trial_s, the shortest allowed) resets
    each trial boot; after MAX_BOOTS the old main.py comes back and says rolled_back."""
    silent = release_main("1.3.0", kind="silent")
    keys = ["OTA-SILENT-1"]
    with fleet(tmp_path / "flash", hub, signer, keys, config={"ota_trial_s": 30}) as picos:
        (p,) = picos
        await online(pool, picos)
        await release(settings, tmp_path, "1.3.0", silent)
        rid = await cli_rollout(settings, "1.3.0", "--waves", "100", "--timeout-s", "900")
        await wait_report(pool, p, "applied", "1.3.0", timeout=60)
        await wait_report(pool, p, "rolled_back", "1.3.0", timeout=200)
        assert p.read("main.py") == OLD, p.console()
        assert p.ota_state()["pending"] is None
        assert await members(pool, rid) == {p.key: ("rolled_back", "boot_loop")}
        # one reset to apply, then one per trial boot at its deadline (no watchdog: it is fed)
        assert p.board.resets() == ["machine.reset"] * 4, (p.board.resets(), p.console())
        await until(p.board, lambda: runs(pool, hub, p.key, "1.0.0"), timeout=30)


async def test_rollback_then_a_new_rollout_does_not_loop(
    hub: RunningHub, signer: Signer, pool: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    """Issue 19, finding 3, device side: `ota rollback` leaves each board's per-device
    rollback meta retained; after a new channel rollout the boards install it and reboot,
    and the same rollback meta comes back. Applied again, it loops (a full download and
    flash write each time). Counted over a window on two boards: one version change each."""
    keys = ["OTA-LOOP-1", "OTA-LOOP-2"]
    with fleet(tmp_path / "flash", hub, signer, keys) as picos:
        await online(pool, picos)
        await release(settings, tmp_path, "1.0.0", OLD)  # the good release to go back to
        await release(settings, tmp_path, "1.1.0", release_main("1.1.0"))
        rid = await cli_rollout(settings, "1.1.0", "--waves", "100")
        await wait_rollout(pool, rid, "completed", picos)
        rb = await picofleet_json(settings, "ota", "rollback")
        await wait_rollout(pool, int(rb["id"]), "completed", picos)
        for p in picos:
            await until(p.board, functools.partial(runs, pool, hub, p.key, "1.0.0"), timeout=60)
        seen = {p.key: len(await reports(pool, p.key)) for p in picos}

        new = release_main("1.2.0")
        await release(settings, tmp_path, "1.2.0", new)
        await cli_rollout(settings, "1.2.0", "--channel", "stable")
        for p in picos:
            await wait_report(pool, p, "booted_ok", "1.2.0", timeout=90)
        await settle(30)  # the window: every reboot re-delivers the retained metas

        for p in picos:
            after = (await reports(pool, p.key))[seen[p.key] :]
            applied = [r["version"] for r in after if r["state"] == "applied"]
            assert applied == ["1.2.0"], (p.key, [(r["version"], r["state"]) for r in after])
            assert p.read("main.py") == new and await firmware(pool, p.key) == "1.2.0"
            assert await runs(pool, hub, p.key, "1.2.0")
