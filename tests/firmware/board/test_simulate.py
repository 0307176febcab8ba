"""``picofleet simulate --firmware``: N boards in real MicroPython against the hub."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from picofleet.core.settings import Settings
from picofleet.sim.board.fleet import run_board_fleet
from tests.conftest import running_hub
from tests.firmware.board.kit import provisioned, seqs
from tests.helpers import SECRET, run_cli, wait_for


async def test_board_fleet_provisions_and_reports(
    settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    keys = ["SIMW-000", "SIMW-001"]
    async with running_hub(settings) as hub:
        stop = asyncio.Event()
        fleet = asyncio.create_task(
            run_board_fleet(
                n=2,
                mqtt_host="127.0.0.1",
                mqtt_port=hub.mqtt_port,
                http_base=hub.http,
                keys=hub.keys,
                root=tmp_path / "boards",
                telemetry_interval_s=2,
                stop=stop,
            )
        )

        async def all_reporting() -> bool:
            for k in keys:
                if not await provisioned(pool, k, "1.0.0") or len(await seqs(pool, k)) < 2:
                    return False
            return True

        try:
            await wait_for(all_reporting, timeout=90, interval=0.5)
        finally:
            stop.set()
            reports = await fleet
    assert [r.key for r in reports] == keys
    assert all(r.boots == 1 and r.resets == [] for r in reports), reports


async def test_simulate_firmware_cli(
    settings: Settings, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PICOFLEET_PROVISION_SECRET", SECRET)
    async with running_hub(settings) as hub:
        out = await asyncio.to_thread(
            run_cli,
            "simulate",
            "--firmware",
            "--port",
            str(hub.mqtt_port),
            "--devices",
            "1",
            "--duration",
            "20",
            data_dir=settings.data_dir,
        )
        assert "SIMW-000: boots 1, resets none" in out, out
        assert await provisioned(pool, "SIMW-000", "1.0.0"), out
