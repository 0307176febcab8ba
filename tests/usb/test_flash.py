"""`picofleet usb flash` and `usb list`: the real CLI and the real mpremote against pty Picos.

Each board is a FakePico (tests/usb/fake_pico.py): a pseudo-terminal speaking MicroPython's
raw REPL, executing what mpremote sends against a temp dir that is the board's flash.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import asyncpg

from picofleet.core.credentials import FleetKeys
from picofleet.core.settings import Settings
from picofleet.core.signing import init_keys
from picofleet.ota.release import create_release
from picofleet.usb._bundle import load_app
from tests.helpers import SECRET
from tests.usb.conftest import picofleet
from tests.usb.fake_pico import FakePico

UIDS = ["E6614103E7452D2F", "E6614103E7452D30", "E6614103E7452D31"]
OLD = {"main.py": b"print('old app')\n", "lib.py": b"X = 1\n"}


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        "PICOFLEET_DATABASE_URL": str(settings.database_url),
        "PICOFLEET_PROVISION_SECRET": SECRET,
        "PICOFLEET_DATA_DIR": str(settings.data_path),
        "PICOFLEET_PUBLIC_HOST": "10.1.2.3",
        "PICOFLEET_HTTP_PORT": str(settings.http_port),
        "PICOFLEET_LOG_FORMAT": "json",
        **extra,
    }


def old_board(root: Path) -> Path:
    root.mkdir(parents=True)
    for name, data in OLD.items():
        (root / name).write_bytes(data)
    return root


async def run(*args: str, env: dict[str, str]) -> Any:
    return await asyncio.to_thread(picofleet, *args, env=env)


async def test_flash_boards_in_parallel_one_unplugged_mid_copy(
    settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    settings.data_path.mkdir(parents=True)
    bundle = load_app("pico_usb")
    with (
        FakePico(old_board(tmp_path / "a"), uid=UIDS[0]) as a,
        FakePico(old_board(tmp_path / "b"), uid=UIDS[1], raw_paste=False) as b,
        FakePico(old_board(tmp_path / "c"), uid=UIDS[2], unplug_after_written=1000) as c,
    ):
        assert a.mode == "app"  # main.py runs: mpremote has to interrupt it
        ports = ",".join(p.path for p in (a, b, c))
        proc = await run(
            "usb", "flash", "--all", "--app", "pico_usb", "--json",
            env=env_for(settings, PICOFLEET_USB_PORTS=ports),
        )  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        assert "1 of 3 board(s) failed" in proc.stderr
        results = {r["device_key"] or r["port"]: r for r in json.loads(proc.stdout)}

        expected = {f.name: f.sha256 for f in bundle.files}
        for board, uid in ((a, UIDS[0]), (b, UIDS[1])):
            files = board.files()
            assert results[uid]["ok"] is True
            for name, sha in expected.items():
                assert hashlib.sha256(files[name]).hexdigest() == sha, name
            cfg = json.loads(files["config.json"])
            assert (cfg["device_key"], cfg["device_type"]) == (uid, "pico_usb")
            assert cfg["mqtt_password"] is None  # the gateway publishes for a USB Pico
            assert json.loads(files["version.json"])["version"] == bundle.version
            assert files["lib.py"] == OLD["lib.py"]  # not ours: left alone
            assert not any(n.startswith(".picofleet-new") for n in files)
            assert board.mode == "app" and board.app_starts == 1  # restarted into main.py

        # The board that went away mid-copy still has exactly its previous files.
        assert c.unplugged.is_set()
        failed = results[UIDS[2]]
        assert (failed["ok"], failed["step"], failed["reason"]) == (
            False,
            "copy",
            "transport_error",
        )
        kept = {n: d for n, d in c.files().items() if not n.startswith(".picofleet-new/")}
        assert kept == OLD
        assert c.written >= 1000  # it really was cut mid-copy

    rows = await pool.fetch(
        "SELECT device_key, version, state, reason, source, detail FROM deploy_event"
        " ORDER BY device_key"
    )
    assert [(r["device_key"], r["state"], r["source"]) for r in rows] == [
        (UIDS[0], "flashed", "usb"),
        (UIDS[1], "flashed", "usb"),
        (UIDS[2], "failed", "usb"),
    ]
    ok_detail = json.loads(rows[0]["detail"])
    assert rows[0]["version"] == bundle.version
    assert ok_detail["files"]["main.py"] == expected["main.py"]
    assert set(ok_detail["copied"]) == {*expected, "config.json", "version.json"}
    assert ok_detail["previous"]["files"]["main.py"] == hashlib.sha256(OLD["main.py"]).hexdigest()
    bad = rows[2]
    assert bad["reason"] == "transport_error"
    assert json.loads(bad["detail"])["step"] == "copy"
    types = await pool.fetch("SELECT device_key, device_type FROM device ORDER BY device_key")
    assert [(r["device_key"], r["device_type"]) for r in types] == [
        (UIDS[0], "pico_usb"),
        (UIDS[1], "pico_usb"),
    ]


def pico_w_source(root: Path, version: str) -> Path:
    root.mkdir(parents=True)
    (root / "main.py").write_text(f'VERSION = "{version}"\nprint("pico_w app")\n')
    (root / "boot.py").write_text("# updater: never replaced by OTA\n")
    return root


async def test_pico_w_provisioning_keeps_board_settings_and_lists(
    settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    signer = init_keys(settings.data_path)
    source = pico_w_source(tmp_path / "pico_w", "1.4.0")
    options = tmp_path / "boards.json"
    options.write_text(
        json.dumps(
            {
                "broker": {"host": "192.168.7.2", "port": 1883},
                "devices": {UIDS[0]: {"calibration": {"moisture_dry": 50123}}},
            }
        )
    )
    keys = FleetKeys(SECRET.encode())
    with FakePico(tmp_path / "board", uid=UIDS[0]) as board:
        env = env_for(settings, PICOFLEET_USB_PORTS=board.path)
        first = await run(
            "usb", "flash", "--port", board.path, "--app", "pico_w", "--source", str(source),
            "--config", str(options), "--wifi-ssid", "greenhouse", "--wifi-password", "s3cret!",
            env=env,
        )  # fmt: skip
        assert first.returncode == 0, first.stderr
        cfg = json.loads(board.files()["config.json"])
        assert cfg["device_key"] == UIDS[0]
        assert cfg["mqtt_password"] == keys.device_password(UIDS[0])
        assert cfg["provision_key"] == keys.provision_key(UIDS[0])
        assert cfg["wifi"] == {"ssid": "greenhouse", "password": "s3cret!"}
        assert cfg["broker"] == {"host": "192.168.7.2", "port": 1883}
        assert cfg["hub_http"] == f"http://10.1.2.3:{settings.http_port}"  # the hub itself
        assert (cfg["ota_pubkey"], cfg["ota_key_id"]) == (signer.public_b64, signer.key_id)
        assert cfg["calibration"] == {"moisture_dry": 50123, "moisture_wet": 21000}
        assert board.files()["boot.py"] == (source / "boot.py").read_bytes()

        # Flashing again without any options keeps the board's Wi-Fi and calibration, and
        # copies nothing that is already there.
        again = await run(
            "usb", "flash", "--port", board.path, "--app", "pico_w", "--source", str(source),
            "--json", env=env,
        )  # fmt: skip
        assert again.returncode == 0, again.stderr
        (result,) = json.loads(again.stdout)
        assert result["copied"] == []
        assert json.loads(board.files()["config.json"]) == cfg

        listed = await run("usb", "list", "--json", env=env)
        assert listed.returncode == 0, listed.stderr
        rows = [r for r in json.loads(listed.stdout) if r["port"] == board.path]
        assert rows == [
            {
                "port": board.path,
                "serial_number": None,
                "usb_id": None,
                "mode": "REPL",
                "mount": None,
                "chip": None,
                "device_key": UIDS[0],
                "app": "pico_w",
                "firmware": "1.4.0",
                "uid": UIDS[0],
                "probe": "ok",
            }
        ]
        assert board.mode == "app"  # listing restarted the app it interrupted
    states = await pool.fetch("SELECT state, version FROM deploy_event ORDER BY id")
    assert [(r["state"], r["version"]) for r in states] == [("flashed", "1.4.0")] * 2
    assert await pool.fetchval("SELECT device_type FROM device") == "pico_w"


async def test_flash_a_release_from_the_ota_store(
    settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    signer = init_keys(settings.data_path)
    artifact = b'VERSION = "1.5.0"\nprint("released app")\n'
    async with pool.acquire() as conn:
        await create_release(
            conn,
            settings=settings,
            signer=signer,
            data=artifact,
            version="1.5.0",
            device_type="pico_w",
            max_bytes=65536,
        )
    source = pico_w_source(tmp_path / "pico_w", "1.4.0")
    with FakePico(tmp_path / "board", uid=UIDS[1]) as board:
        proc = await run(
            "usb", "flash", "--port", board.path, "--release", "1.5.0", "--source", str(source),
            "--wifi-ssid", "net", "--broker-host", "10.0.0.5", env=env_for(settings),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        files = board.files()
        assert files["main.py"] == artifact
        assert files["boot.py"] == (source / "boot.py").read_bytes()
        version = json.loads(files["version.json"])
        assert (version["version"], version["release"]) == ("1.5.0", "1.5.0")
        missing = await run(
            "usb", "flash", "--port", board.path, "--release", "9.9.9", "--source", str(source),
            env=env_for(settings),
        )  # fmt: skip
        assert missing.returncode == 1
        assert "no OTA release 9.9.9 for pico_w" in missing.stderr
    row = await pool.fetchrow("SELECT version, state, detail FROM deploy_event")
    assert (row["version"], row["state"]) == ("1.5.0", "flashed")
    assert json.loads(row["detail"])["release"] == "1.5.0"
