"""Rollouts driven by the announcer against a scripted fleet of fake devices."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import httpx

from picofleet.core.credentials import OPERATOR_USER
from picofleet.core.settings import Settings
from picofleet.core.signing import Signer
from picofleet.core.topics import Kind
from picofleet.ota.model import HALTED_CODE
from picofleet.ota.rollouts import assign_waves
from tests.conftest import RunningHub
from tests.helpers import Client, wait_for
from tests.ota.conftest import (
    app_source,
    member_states,
    picofleet,
    picofleet_json,
    release,
    rollout,
    rollout_state,
    spawn,
    wait_state,
)
from tests.ota.fleet import Behaviour, Fleet


def keys_of(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(n)]


async def offered_counts(pool: asyncpg.Pool, rollout_id: int) -> Counter[str]:
    rows = await pool.fetch(
        "SELECT device_key FROM deploy_event WHERE source = 'hub' AND state = 'offered'"
        " AND detail->>'rollout' = $1",
        str(rollout_id),
    )
    return Counter(r["device_key"] for r in rows)


async def wave_events(pool: asyncpg.Pool, rollout_id: int) -> list[tuple[str, int | None]]:
    rows = await pool.fetch(
        "SELECT event, wave FROM ota_rollout_event WHERE rollout_id = $1 ORDER BY id", rollout_id
    )
    return [(r["event"], r["wave"]) for r in rows]


async def retained(hub: RunningHub, topic: str) -> bytes | None:
    """What a subscriber gets from the broker's retained store for ``topic`` right now."""
    # The operator's client id is its username (bound on Mosquitto: picofleet/broker/mosquitto.py).
    c = Client(
        hub.operator_port, OPERATOR_USER, hub.keys.role_password(OPERATOR_USER), OPERATOR_USER
    )
    assert await asyncio.to_thread(c.connect)
    await asyncio.to_thread(c.subscribe, topic)
    await asyncio.sleep(0.3)
    c.close()
    got = [p for t, p in c.messages if t == topic]
    return got[-1] if got and got[-1] else None


async def test_three_wave_rollout_completes(
    hub: RunningHub,
    fleet: Fleet,
    pool: asyncpg.Pool,
    settings: Settings,
    signer: Signer,
    tmp_path: Path,
) -> None:
    keys = keys_of("W", 10)
    devices = await spawn(fleet, pool, keys)
    # A legacy sender declares no type: it must not become a member of a Pico-W rollout.
    legacy = [{"device_id": 7, "event_type": "battery_charge", "value": 50, "timestamp": 1.7e9}]
    async with httpx.AsyncClient(base_url=hub.http) as http:
        assert (await http.post("/ingest", json=legacy)).json()[0]["status"] == "ok"
    main = tmp_path / "main.py"
    main.write_bytes(app_source("1.1.0"))
    await picofleet_json(settings, "ota", "release", str(main), "--version", "1.1.0")
    ro = await picofleet_json(
        settings,
        "ota",
        "rollout",
        "1.1.0",
        "--device-type",
        "pico_w",
        "--waves",
        "10,50,100",
        "--soak-s",
        "1",
        "--timeout-s",
        "20",
    )
    assert ro["wave_sizes"] == [1, 4, 5]
    assert set(await member_states(pool, ro["id"])) == set(keys)
    await wait_state(pool, ro["id"], "completed", timeout=60)

    status = await picofleet_json(settings, "ota", "status", "1.1.0")
    assert {d["device_key"]: d["state"] for d in status["devices"]} == dict.fromkeys(
        keys, "booted_ok"
    )
    assert [r["state"] for r in status["rollouts"]] == ["completed"]
    assert all(d.firmware == "1.1.0" for d in devices)
    rc, table, err = await picofleet(settings, "ota", "status", COLUMNS="200")
    assert rc == 0, err
    assert "completed" in table and table.count("booted_ok") >= len(keys)
    # Waves went out in order, each exactly once, each device offered exactly once.
    events = await wave_events(pool, ro["id"])
    assert [e for e in events if e[0] in ("wave_started", "wave_done")] == [
        ("wave_started", 0),
        ("wave_done", 0),
        ("wave_started", 1),
        ("wave_done", 1),
        ("wave_started", 2),
        ("wave_done", 2),
    ]
    assert events[-1] == ("completed", None)
    assert await offered_counts(pool, ro["id"]) == Counter(dict.fromkeys(keys, 1))
    # Deterministic membership, and a later wave was offered only after the earlier was done.
    waves = assign_waves(keys, [10, 50, 100])
    rows = await pool.fetch(
        "SELECT device_key, wave, offered_at, healthy_at FROM ota_rollout_device"
        " WHERE rollout_id = $1",
        ro["id"],
    )
    assert {r["device_key"]: r["wave"] for r in rows} == waves
    for later in rows:
        for earlier in rows:
            if earlier["wave"] < later["wave"]:
                assert later["offered_at"] >= earlier["healthy_at"]
    # New devices of the channel get the release from the channel topic from now on.
    payload = await retained(hub, hub.topics.ota_channel("pico_w", "stable"))
    assert payload is not None
    assert json.loads(json.loads(payload)["manifest"])["version"] == "1.1.0"


async def test_rolled_back_devices_halt_the_first_wave(
    hub: RunningHub, fleet: Fleet, api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    keys = keys_of("B", 10)
    devices = await spawn(fleet, pool, keys, behaviour=Behaviour.BOOT_LOOP)
    watcher = Client(hub.operator_port, OPERATOR_USER, hub.keys.role_password(OPERATOR_USER))
    assert await asyncio.to_thread(watcher.connect)
    await asyncio.to_thread(watcher.subscribe, hub.topics.ingest_errors, 0)
    await release(api, "1.2.0")
    ro = await rollout(
        api, version="1.2.0", waves=[30, 60, 100], soak_s=1, timeout_s=20, max_failure_rate=0.2
    )
    assert ro["wave_sizes"] == [3, 3, 4]
    halted = await wait_state(pool, ro["id"], "halted", timeout=30)
    assert "3 of 3 devices failed" in halted["reason"] and "rolled back 3" in halted["reason"]
    assert halted["current_wave"] == 0

    waves = assign_waves(keys, [30, 60, 100])
    first = {k for k, w in waves.items() if w == 0}
    states = await member_states(pool, ro["id"])
    assert {k for k, s in states.items() if s == "rolled_back"} == first
    # Devices not started are skipped for good: a halted rollout offers nothing more.
    assert {k for k, s in states.items() if s == "skipped"} == set(keys) - first
    # Later waves never received anything: not live, and not from the retained store.
    for d in devices:
        assert bool(d.received_manifests()) is (d.key in first), d.key
    for k in sorted(set(keys) - first)[:2]:
        assert await retained(hub, hub.topics.device(k, Kind.OTA)) is None

    # The first wave's per-device topics no longer ask for the halted release: a device that
    # reboots finds nothing to install (issue 19: the topic says what the device should run).
    async def first_cleared() -> bool:
        for k in first:
            if await retained(hub, hub.topics.device(k, Kind.OTA)) is not None:
                return False
        return True

    await wait_for(first_cleared, timeout=5)
    await asyncio.sleep(0.5)  # a few more ticks change nothing
    assert (await member_states(pool, ro["id"])) == states

    # It says so on ingest/errors, in the release record and in `ota status`.
    def halt_notes() -> list[dict[str, object]]:
        return [json.loads(p) for t, p in watcher.messages if t == hub.topics.ingest_errors]

    notes = await wait_for(
        lambda: asyncio.sleep(0, [n for n in halt_notes() if n.get("code") == HALTED_CODE])
    )
    watcher.close()
    assert notes[0]["rollout"] == str(ro["id"]) and notes[0]["version"] == "1.2.0"
    assert await pool.fetchval("SELECT bad_reason FROM ota_release WHERE version = '1.2.0'")
    status = (await api.get("/api/ota/status", params={"version": "1.2.0"})).json()
    assert status["rollouts"][0]["state"] == "halted"
    assert status["rollouts"][0]["rolled_back"] == 3
    reasons = {
        d["device_key"]: d["reason"] for d in status["devices"] if d["state"] == "rolled_back"
    }
    assert reasons == dict.fromkeys(first, "boot_loop")


async def test_silent_device_times_out_and_counts_toward_the_halt(
    hub: RunningHub, fleet: Fleet, api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    keys = keys_of("S", 5)
    waves = assign_waves(keys, [60, 100])
    first = sorted(k for k, w in waves.items() if w == 0)
    assert len(first) == 3
    silent = first[0]
    await spawn(fleet, pool, [k for k in keys if k != silent])
    await spawn(fleet, pool, [silent], behaviour=Behaviour.SILENT)
    await release(api, "1.1.0")
    ro = await rollout(
        api, version="1.1.0", waves=[60, 100], soak_s=30, timeout_s=2, max_failure_rate=0.2
    )
    halted = await wait_state(pool, ro["id"], "halted", timeout=30)
    assert "timed out 1" in halted["reason"]
    m = await pool.fetchrow(
        "SELECT state, reason, started_at FROM ota_rollout_device"
        " WHERE rollout_id = $1 AND device_key = $2",
        ro["id"],
        silent,
    )
    assert (m["state"], m["reason"]) == ("timed_out", "timeout")
    assert m["started_at"] is not None  # it did say "received", then went quiet
    logged = await pool.fetchrow(
        "SELECT reason, detail FROM deploy_event WHERE device_key = $1 AND source = 'hub'"
        " AND state = 'timed_out'",
        silent,
    )
    assert logged["reason"] == "timeout"
    assert json.loads(logged["detail"])["rollout"] == str(ro["id"])
    # The second wave was never offered.
    states = await member_states(pool, ro["id"])
    assert all(states[k] == "skipped" for k in keys if k not in first)
    assert await pool.fetchval(
        "SELECT count(*) FROM ota_rollout_device WHERE rollout_id = $1 AND offered_at IS NOT NULL",
        ro["id"],
    ) == len(first)


async def test_hub_restart_mid_rollout_loses_and_repeats_nothing(
    hub: RunningHub,
    hub_factory: Callable[[], Awaitable[RunningHub]],
    fleet: Fleet,
    pool: asyncpg.Pool,
    settings: Settings,
    api: httpx.AsyncClient,
) -> None:
    keys = keys_of("R", 6)
    devices = await spawn(fleet, pool, keys)
    await release(api, "1.1.0")
    ro = await rollout(
        api,
        version="1.1.0",
        waves=[33, 66, 100],
        soak_s=1,
        timeout_s=60,
        pause_between_waves=True,
    )
    assert ro["wave_sizes"] == [2, 2, 2]
    rid = ro["id"]
    waves = assign_waves(keys, [33, 66, 100])
    await wait_state(pool, rid, "waiting")

    # Restart while waiting for the operator: the broker's retained store goes with it.
    await hub.stop()
    hub2 = await hub_factory()
    first = sorted(k for k, w in waves.items() if w == 0)
    got = await wait_for(lambda: retained(hub2, hub2.topics.device(first[0], Kind.OTA)))
    assert json.loads(json.loads(got)["manifest"])["rollout"] == str(rid)
    assert (await rollout_state(pool, rid))["state"] == "waiting"  # still waiting: nothing moved

    # Resume (CLI, straight to the database), then restart again in the middle of wave 2.
    out = await picofleet_json(settings, "ota", "resume", str(rid))
    assert out["state"] == "running"

    async def wave2_offered() -> bool:
        n = await pool.fetchval(
            "SELECT count(*) FROM ota_rollout_device WHERE rollout_id = $1 AND wave = 1"
            " AND offered_at IS NOT NULL",
            rid,
        )
        return bool(n == 2)

    await wait_for(wave2_offered)
    await hub2.stop()
    await hub_factory()
    await wait_state(pool, rid, "waiting")
    await picofleet_json(settings, "ota", "resume", str(rid))
    await wait_state(pool, rid, "completed", timeout=60)

    assert set((await member_states(pool, rid)).values()) == {"booted_ok"}
    assert all(d.firmware == "1.1.0" for d in devices)
    assert await offered_counts(pool, rid) == Counter(dict.fromkeys(keys, 1))
    started = [w for e, w in await wave_events(pool, rid) if e == "wave_started"]
    assert started == [0, 1, 2]
    # Each device installed once, although it saw its meta again after every restart.
    for d in devices:
        assert [r["state"] for r in d.reports].count("booted_ok") == 1, d.key


async def test_pause_resume_abort(
    hub: RunningHub, fleet: Fleet, api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    online = await spawn(fleet, pool, keys_of("P", 2))
    offline = keys_of("Q", 2)
    for d in await spawn(fleet, pool, offline):
        await asyncio.to_thread(d.stop)  # known to the hub, away during the rollout
    await release(api, "1.1.0")
    await release(api, "1.2.0")
    ro = await rollout(api, version="1.1.0", waves=[100], soak_s=0, timeout_s=60, min_booted=1.0)
    rid = ro["id"]
    other = await api.post("/api/ota/rollouts", json={"version": "1.2.0", "waves": [100]})
    assert other.status_code == 409 and "abort it" in other.json()["detail"]

    async def online_done() -> bool:
        states = await member_states(pool, rid)
        return all(states[d.key] == "booted_ok" for d in online)

    await wait_for(online_done)
    q0 = hub.topics.device(offline[0], Kind.OTA)
    assert await wait_for(lambda: retained(hub, q0))

    r = await api.post(f"/api/ota/rollouts/{rid}/pause")
    assert r.status_code == 200 and sorted(r.json()["withdrawn"]) == offline
    states = await member_states(pool, rid)
    assert [states[k] for k in offline] == ["pending", "pending"]
    assert all(states[d.key] == "booted_ok" for d in online)  # finished: untouched

    async def cleared() -> bool:
        return await retained(hub, q0) is None

    await wait_for(cleared)
    assert (await api.post(f"/api/ota/rollouts/{rid}/pause")).status_code == 409

    assert (await api.post(f"/api/ota/rollouts/{rid}/resume")).json()["state"] == "running"
    assert await wait_for(lambda: retained(hub, q0))  # offered again
    offered = await offered_counts(pool, rid)
    assert [offered[k] for k in offline] == [2, 2]

    r = await api.post(f"/api/ota/rollouts/{rid}/abort")
    assert r.status_code == 200 and sorted(r.json()["skipped"]) == offline
    await wait_for(cleared)
    states = await member_states(pool, rid)
    assert [states[k] for k in offline] == ["skipped", "skipped"]
    assert all(states[d.key] == "booted_ok" for d in online)
    reasons = await pool.fetch(
        "SELECT device_key, state, reason FROM deploy_event WHERE source = 'hub'"
        " AND device_key = $1 ORDER BY id",
        offline[0],
    )
    assert [(r["state"], r["reason"]) for r in reasons] == [
        ("offered", None),
        ("withdrawn", "paused"),
        ("offered", None),
        ("skipped", "aborted"),
    ]
    assert (await api.post(f"/api/ota/rollouts/{rid}/resume")).status_code == 409
    # With nothing active, the next rollout may start.
    assert (await rollout(api, version="1.2.0", waves=[100]))["id"] > rid


async def test_rollback_and_pin(
    hub: RunningHub, fleet: Fleet, api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    devices = await spawn(fleet, pool, keys_of("K", 3))
    a = devices[0]
    for v in ("1.0.0", "1.1.0", "1.2.0", "1.3.0"):
        await release(api, v)
    for v in ("1.1.0", "1.2.0"):
        ro = await rollout(api, version=v, waves=[100], soak_s=0, timeout_s=30)
        await wait_state(pool, ro["id"], "completed")
    assert {d.firmware for d in devices} == {"1.2.0"}

    # Rollback: the previous good release (1.1.0 completed a rollout; 1.0.0 never did).
    r = await api.post("/api/ota/rollback", json={"device_type": "pico_w"})
    assert r.status_code == 201, r.text
    rb = r.json()
    assert (rb["from_version"], rb["version"], rb["action"]) == ("1.2.0", "1.1.0", "rollback")
    assert rb["devices"] == 3 and rb["channels"] == ["stable"]
    await wait_state(pool, rb["id"], "completed")
    assert {d.firmware for d in devices} == {"1.1.0"}
    assert (
        await pool.fetchval(
            "SELECT state FROM ota_rollout WHERE version = '1.2.0' AND kind = 'waves'"
        )
        == "rolled_back"
    )
    assert await pool.fetchval("SELECT bad_reason FROM ota_release WHERE version = '1.2.0'")
    stable = await retained(hub, hub.topics.ota_channel("pico_w", "stable"))
    assert stable is not None
    m = json.loads(json.loads(stable)["manifest"])
    assert (m["version"], m["action"], m["rollout"]) == ("1.1.0", "rollback", str(rb["id"]))
    again = await api.post("/api/ota/rollback", json={"device_type": "pico_w"})
    assert again.status_code == 409

    # Pin one device to 1.0.0: it installs exactly that, and fleet rollouts skip it.
    r = await api.put(f"/api/ota/pins/{a.key}", json={"version": "1.0.0"})
    assert r.status_code == 200, r.text
    await wait_state(pool, r.json()["id"], "completed")
    assert a.firmware == "1.0.0"
    pins = (await api.get("/api/ota/pins")).json()
    assert [(p["device_key"], p["version"]) for p in pins] == [(a.key, "1.0.0")]
    ro = await rollout(api, version="1.3.0", waves=[100], soak_s=0, timeout_s=30)
    await wait_state(pool, ro["id"], "completed")
    states = await member_states(pool, ro["id"])
    assert states[a.key] == "skipped" and a.firmware == "1.0.0"
    assert {d.firmware for d in devices[1:]} == {"1.3.0"}

    r = await api.delete(f"/api/ota/pins/{a.key}")
    assert r.status_code == 200 and r.json()["unpinned"] == "1.0.0"
    assert (await api.delete(f"/api/ota/pins/{a.key}")).status_code == 404

    async def cleared() -> bool:
        return await retained(hub, hub.topics.device(a.key, Kind.OTA)) is None

    await wait_for(cleared)
    # Unpinned, it follows its channel again: the completed 1.3.0 rollout's stable meta.
    # (After a reset: the embedded broker's tap does not pass the empty retained message on
    # to live subscribers; see test_live_device_sees_the_unpin.)
    await asyncio.to_thread(a.reset)
    await wait_for(lambda: asyncio.sleep(0, a.firmware == "1.3.0"))
    log = (await api.get("/api/deploy-log", params={"device": a.key, "limit": 200})).json()["items"]
    hub_states = [e["state"] for e in reversed(log) if e["source"] == "hub"]
    assert hub_states.count("pinned") == 1
    assert hub_states.index("unpinned") > hub_states.index("pinned")


async def test_live_device_sees_the_unpin(
    hub: RunningHub, fleet: Fleet, api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    [a] = await spawn(fleet, pool, ["U000"])
    await release(api, "1.1.0")
    r = await api.put(f"/api/ota/pins/{a.key}", json={"version": "1.1.0"})
    await wait_state(pool, r.json()["id"], "completed")
    assert (await api.delete(f"/api/ota/pins/{a.key}")).status_code == 200
    own = hub.topics.device(a.key, Kind.OTA)

    async def got_clear() -> bool:
        return any(t == own and p == b"" for t, p in a.metas)

    await wait_for(got_clear, timeout=3)
