"""The device side of OTA, executed by the real interpreter: one MicroPython board
(``picofleet.sim.board``, the unmodified ``pico_w`` files) against the real hub, offered
signed metas through the hub's own retained-meta table and announcer. Every refusal leaves
main.py alone; a power cut before any flash operation of an install leaves a board that
boots a whole main.py and converges on one version; a rollback is applied once."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from picofleet.core.artifacts import ArtifactStore
from picofleet.core.settings import Settings
from picofleet.core.signing import Signer, init_keys
from picofleet.sim.board import HEAP_CEILING, Heap, available
from tests.conftest import RunningHub, need
from tests.firmware.artifacts import (
    CutProxy,
    manifest,
    put_channel_meta,
    put_device_meta,
    release_main,
    signed,
)
from tests.firmware.board.kit import until
from tests.firmware.ota_kit import Pico, fleet, online, reports, settle, states, status_fw

OLD = release_main("1.0.0")
FLOW = ["received", "downloading", "verified", "applied", "booted_ok"]


@pytest.fixture(autouse=True)
def _board_available() -> None:
    need(available(), "node + npm @micropython/micropython-webassembly-pyscript")


@pytest.fixture(autouse=True)
def _fast_ota(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PICOFLEET_OTA_TICK_S", "0.1")


@pytest.fixture
def signer(settings: Settings) -> Signer:
    return init_keys(settings.data_path)


def other_signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate())


def store(settings: Settings, data: bytes) -> str:
    """Put an artifact where the hub serves it from; its sha256."""
    return ArtifactStore.for_settings(settings).put(data)


async def n_reports(pool: asyncpg.Pool, p: Pico, n: int, timeout: float = 60) -> list[Any]:
    """The device's first ``n`` reports, once the deploy log has them."""

    async def check() -> list[Any] | None:
        got = await states(pool, p.key)
        return got if len(got) >= n else None

    got: list[Any] = await until(p.board, check, timeout=timeout)
    return got


def untouched(p: Pico) -> None:
    """Nothing of an update left in flash: the old main.py, no backup, no part file."""
    assert p.read("main.py") == OLD, p.console()
    names = {f.name for f in p.root.iterdir()}
    assert not names & {"main.py.bak", "main.py.bak.tmp", "ota.json.tmp"}, names
    assert p.ota_state().get("pending") is None, p.ota_state()


async def test_bad_metas_are_refused_before_any_download(
    hub: RunningHub, signer: Signer, pool: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    """Wrong key, a manifest changed after signing, a signature by another key under the
    fleet key's id: each is reported failed with its reason, no byte is downloaded."""
    new = release_main("1.1.0")
    store(settings, new)
    async with CutProxy(hub.settings.http_port) as proxy:
        via_proxy = settings.model_copy(update={"http_port": proxy.port})
        fields = manifest(via_proxy, new, "1.1.0")
        good = json.loads(signed(signer, fields))
        stranger = other_signer()
        cases = [
            ("key_unknown", signed(stranger, fields)),
            (
                "sig_invalid",
                json.dumps({**good, "manifest": good["manifest"].replace("1.1", "1.2")}),
            ),
            ("sig_invalid", signed(stranger, fields, key_id=signer.key_id)),
        ]
        with fleet(tmp_path / "flash", hub, signer, ["OTA-META-1"]) as (p,):
            await online(pool, [p])
            for i, (_, payload) in enumerate(cases, 1):
                await put_device_meta(pool, p.key, payload)
                await n_reports(pool, p, i)
            await settle(3)
            assert await states(pool, p.key) == [(None, "failed", r) for r, _ in cases]
            assert proxy.ranges == []  # not one request for the artifact
            untouched(p)
            assert not p.exists("ota.part")
            assert p.board.resets() == []


async def test_bad_artifacts_are_refused_and_nothing_is_replaced(
    hub: RunningHub, signer: Signer, pool: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    """Signed manifests whose artifact lies: other bytes than the sha256 says (not retried),
    more bytes than the size says, fewer. main.py stays, nothing is verified or applied."""
    served = release_main("1.1.0", pad_to=6_000)
    sha = store(settings, served)
    url = f"http://127.0.0.1:{settings.http_port}/ota/artifacts/{sha}"
    other = release_main("1.1.0", pad_to=6_100)
    cases: list[tuple[str, dict[str, Any]]] = [  # (reason, fields over the served artifact)
        ("hash_mismatch", {"sha256": hashlib.sha256(other).hexdigest()}),
        ("hash_mismatch", {"size": len(served) - 100, "sha256": _sha(served[:-100])}),
        ("download_error", {"size": len(served) + 100, "sha256": _sha(served + b"#" * 100)}),
    ]
    with fleet(tmp_path / "flash", hub, signer, ["OTA-ART-1"]) as (p,):
        await online(pool, [p])
        n = 0
        for version, (reason, over) in zip(("1.1.0", "1.1.1", "1.1.2"), cases, strict=True):
            fields = manifest(settings, served, version, artifact_url=url, **over)
            await put_device_meta(pool, p.key, signed(signer, fields))
            # a download error is tried three times (15 s, then 30 s apart) before it fails
            n += 9 if reason == "download_error" else 3
            await n_reports(pool, p, n, timeout=120)
            if over.get("sha256") == cases[0][1]["sha256"]:
                assert not p.exists("ota.part")  # worthless bytes are not kept
        await settle(3)
        got = await states(pool, p.key)
        want: list[tuple[str, str, str | None]] = []
        for version, (reason, _) in zip(("1.1.0", "1.1.1", "1.1.2"), cases, strict=True):
            tries = 3 if reason == "download_error" else 1
            for t in range(tries):
                want += [(version, "received", None), (version, "downloading", None)]
                last = t == tries - 1
                want.append((version, "failed" if last else "downloading", reason))
        assert got[: len(want)] == want, got
        assert not {s for _, s, _ in got} & {"verified", "applied", "booted_ok"}, got
        untouched(p)
        assert p.board.resets() == []
        assert await status_fw(pool, hub.topics, p.key) == "1.0.0"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_the_same_rollback_meta_is_applied_once(
    hub: RunningHub, signer: Signer, pool: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    """Issue 19, finding 3, device side: a rollback meta retained on the device's topic is
    delivered again after every reboot. Installed once, it must not be installed again when
    a newer release came on the channel: that was a download-and-flash loop."""
    v11, v12 = release_main("1.1.0"), release_main("1.2.0")
    for data in (OLD, v11, v12):
        store(settings, data)
    t0 = int(time.time())
    with fleet(tmp_path / "flash", hub, signer, ["OTA-ONCE-1"]) as (p,):
        await online(pool, [p])
        await put_device_meta(pool, p.key, signed(signer, manifest(settings, v11, "1.1.0")))
        await _booted(pool, p, "1.1.0")
        back = manifest(settings, OLD, "1.0.0", action="rollback", created_at=t0 + 1)
        await put_device_meta(pool, p.key, signed(signer, back))
        await _booted(pool, p, "1.0.0")
        ahead = manifest(settings, v12, "1.2.0", created_at=t0 + 2)
        await put_channel_meta(pool, signed(signer, ahead))
        await _booted(pool, p, "1.2.0")
        await settle(15)  # reboots re-deliver the retained rollback meta
        p.board.reset_button()
        await settle(15)
        applied = [r["version"] for r in await reports(pool, p.key) if r["state"] == "applied"]
        assert applied == ["1.1.0", "1.0.0", "1.2.0"], (applied, p.console())
        assert p.read("main.py") == v12
        assert await status_fw(pool, hub.topics, p.key) == "1.2.0"


async def _booted(pool: asyncpg.Pool, p: Pico, version: str) -> None:
    async def check() -> bool:
        got = [(r["version"], r["state"]) for r in await reports(pool, p.key)]
        return (version, "booted_ok") in got

    await until(p.board, check, timeout=90)


# -- power cuts ---------------------------------------------------------------------------
async def _install(
    hub: RunningHub, pool: asyncpg.Pool, p: Pico, meta: str, cut: int | None
) -> list[dict[str, Any]]:
    """Bring the board online on 1.0.0, quiet; arm a power cut before the ``cut``-th flash
    operation from now and offer the update. The flash operations seen from then on."""
    await online(pool, [p])
    await until(p.board, functools.partial(_says, pool, hub, p.key, "1.0.0"), timeout=30)
    await settle(1)
    mark = len(p.board.flash_ops())
    if cut is not None:
        p.board.power_cut_at(cut)
    await put_device_meta(pool, p.key, meta)
    if cut is None:
        await _booted(pool, p, "1.1.0")
        await settle(2)
    else:
        await asyncio.to_thread(p.board.wait, lambda e: e["ev"] == "powercut", timeout=60)
    return [dict(e) for e in p.board.flash_ops()[mark:]]


async def _says(pool: asyncpg.Pool, hub: RunningHub, key: str, version: str) -> bool:
    return await status_fw(pool, hub.topics, key) == version


def _step(op: dict[str, Any]) -> str:
    to = f" -> {op['to']}" if op.get("to") else ""
    return f"{op['op']} {op['path']}{to}"


async def test_power_cut_before_every_flash_operation_of_an_install(
    hub: RunningHub, signer: Signer, pool: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    """An install, from the meta to the confirmed trial boot, with the power cut right
    before each of its flash operations in turn (each on its own board): right after the
    cut main.py is whole (old or new); when power returns the board boots, finishes or
    redoes the update and ends on 1.1.0 everywhere: flash, its status, the hub's device
    row and deploy log, with main.py.bak the old app and no temporary file left."""
    new = release_main("1.1.0")
    store(settings, new)
    meta = signed(signer, manifest(settings, new, "1.1.0"))
    with fleet(tmp_path / "ref", hub, signer, ["OTA-CUT-REF"]) as (ref,):
        steps = await _install(hub, pool, ref, meta, None)
    assert [s for s in map(_step, steps) if "ota.part" in s or "main.py" in s], steps
    assert len(steps) >= 15, [_step(s) for s in steps]

    gate = asyncio.Semaphore(4)
    failures: list[str] = []

    async def one(k: int) -> None:
        key = f"OTA-CUT-{k:02d}"
        async with gate:
            with fleet(tmp_path / "cuts", hub, signer, [key]) as (p,):
                await _install(hub, pool, p, meta, k)
                where = _step(steps[k - 1])
                main = p.read("main.py")
                if main not in (OLD, new):
                    failures.append(f"cut before {where}: main.py is neither version")
                    return
                p.board.start()  # power returns
                try:
                    await _booted(pool, p, "1.1.0")
                    await until(p.board, functools.partial(_settled, p), timeout=30)
                except AssertionError as e:
                    failures.append(f"cut before {where}: never converged\n{e}")
                    return
                failures.extend(await _consistent(pool, hub, p, new, where))

    await asyncio.gather(*(one(k) for k in range(1, len(steps) + 1)))
    assert not failures, "\n".join(failures)


async def _settled(p: Pico) -> bool:
    st = p.ota_state()
    return st.get("pending") is None and not st.get("outbox") and not p.exists("ota.part")


async def _consistent(
    pool: asyncpg.Pool, hub: RunningHub, p: Pico, new: bytes, where: str
) -> list[str]:
    out = []
    got = await states(pool, p.key)
    checks = {
        "main.py is the new app": p.read("main.py") == new,
        "main.py.bak is the old app": p.read("main.py.bak") == OLD,
        # (a whole ota.json.tmp may stay: it is the newer state, read first, and the next
        # save renames it away)
        "no part file or half backup": not {"ota.part", "main.py.bak.tmp"}
        & {f.name for f in p.root.iterdir()},
        "status says 1.1.0": await status_fw(pool, hub.topics, p.key) == "1.1.0",
        "the last report is booted_ok 1.1.0": bool(got) and got[-1][:2] == ("1.1.0", "booted_ok"),
        "one booted_ok": [s for _, s, _ in got].count("booted_ok") == 1,
        "no rollback": "rolled_back" not in [s for _, s, _ in got],
    }
    for what, ok in checks.items():
        if not ok:
            out.append(f"cut before {where}: not {what}: reports {got}\n{p.console(20)}")
    return out


# -- figures ------------------------------------------------------------------------------
_VERIFY = """
import time, config, ota
cfg = config.load()
t = time.ticks_ms()
m = ota.verify_meta({raw!r}, config.public_key(cfg), cfg["ota_key_id"])
print("FIGURE verify_ms", time.ticks_diff(time.ticks_ms(), t), m["version"])
del m, cfg
"""


async def test_heap_and_time_of_an_install(
    hub: RunningHub, signer: Signer, pool: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    """Figures of real installs in the interpreter (printed; run with -s): the time from
    the first byte of a 20 KB release written to main.py swapped, the Ed25519 verify time
    of a meta, the firmware's live heap (gc.collect() + gc.mem_alloc() at the next wait,
    less the harness's modules) right after a signature check and right after a 48 KB
    download over a slow link (refused at its hash, so the board does not reset: the
    firmware never idles during a download, so no sample can be taken in the middle of one).
    The live heap stays under the 100 KB the firmware is allowed."""
    fast, slow = release_main("1.1.0", pad_to=20_000), release_main("1.2.0", pad_to=48_000)
    for data in (fast, slow):
        store(settings, data)
    async with CutProxy(hub.settings.http_port, pace_s=0.02) as proxy:
        with fleet(tmp_path / "flash", hub, signer, ["OTA-FIG-1"]) as (p,):
            await online(pool, [p])
            meta = signed(signer, manifest(settings, fast, "1.1.0"))
            mark = len(p.board.events)
            await put_device_meta(pool, p.key, meta)
            await _booted(pool, p, "1.1.0")
            ops = [e for e in p.board.events[mark:] if e["ev"] == "flash"]
            first = next(e["t"] for e in ops if e["path"] == "/ota.part")
            swap = next(e["t"] for e in ops if e["op"] == "rename" and e["path"] == "/ota.part")

            lines = await asyncio.to_thread(p.board.exec, _VERIFY.format(raw=meta.encode()))
            fig = re.search(r"verify_ms (\d+)", "\n".join(lines))
            assert fig is not None, lines
            verified: Heap = await asyncio.to_thread(p.board.heap, "after-verify")

            via_proxy = settings.model_copy(update={"http_port": proxy.port})
            lie = manifest(via_proxy, slow, "1.2.0", sha256=_sha(slow + b"x"))
            await put_device_meta(pool, p.key, signed(signer, lie))
            await until(p.board, lambda: _failed(pool, p, "1.2.0"), timeout=60)
            downloaded: Heap = await asyncio.to_thread(p.board.heap, "after-download")
    print(
        f"\nFIGURE first byte to main.py swapped, {len(fast)} B release: {swap - first} ms"
        f"\nFIGURE Ed25519 verify of a meta in the interpreter: {fig[1]} ms"
        f"\nFIGURE firmware live heap after a signature check: {verified.firmware} B"
        f"\nFIGURE firmware live heap after a {len(slow)} B download: {downloaded.firmware} B"
        f" (harness baseline {downloaded.baseline} B)"
    )
    assert proxy.ranges == [None] and p.read("main.py") == fast
    assert 0 < verified.firmware < HEAP_CEILING, verified
    assert 0 < downloaded.firmware < HEAP_CEILING, downloaded


async def _failed(pool: asyncpg.Pool, p: Pico, version: str) -> bool:
    return (version, "failed", "hash_mismatch") in await states(pool, p.key)
