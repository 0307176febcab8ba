"""`picofleet keys init` and `picofleet ota release`, through the real entry point."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from picofleet.core.errors import NoSigningKey
from picofleet.core.settings import Settings
from picofleet.core.signing import key_paths, load_signer
from tests.ota.conftest import app_source, picofleet, picofleet_json


async def test_keys_init_is_private_and_refuses_to_overwrite(settings: Settings) -> None:
    data = await picofleet_json(settings, "keys", "init")
    private, public = key_paths(settings.data_path)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(private.parent.stat().st_mode) == 0o700
    raw = base64.b64decode(data["public_key"])
    assert len(raw) == 32
    assert data["key_id"] == hashlib.sha256(raw).hexdigest()[:16]
    assert public.read_text().strip() == data["public_key"]
    signer = load_signer(settings.data_path)
    Ed25519PublicKey.from_public_bytes(raw).verify(signer.sign(b"m"), b"m")

    before = private.read_bytes()
    rc, _, err = await picofleet(settings, "keys", "init")
    assert rc == 1
    assert err.startswith("picofleet: ") and "already exists" in err
    assert private.read_bytes() == before

    again = await picofleet_json(settings, "keys", "init", "--force")
    assert again["public_key"] != data["public_key"]
    assert stat.S_IMODE(private.stat().st_mode) == 0o600

    os.chmod(private, 0o644)
    with pytest.raises(NoSigningKey, match="readable by others"):
        load_signer(settings.data_path)


async def test_release_without_key_is_refused(settings: Settings, tmp_path: Path) -> None:
    f = tmp_path / "main.py"
    f.write_bytes(app_source("1.0.0"))
    rc, _, err = await picofleet(settings, "ota", "release", str(f), "--version", "1.0.0")
    assert rc == 1 and "keys init" in err


async def test_release_stores_signs_and_refuses_bad_files(
    settings: Settings, pool: asyncpg.Pool, tmp_path: os.PathLike
) -> None:
    await picofleet(settings, "keys", "init")
    signer = load_signer(settings.data_path)

    def write(name: str, data: bytes) -> str:
        path = os.path.join(tmp_path, name)
        with open(path, "wb") as fh:
            fh.write(data)
        return path

    good = app_source("1.1.0")
    rel = await picofleet_json(
        settings, "ota", "release", write("main.py", good), "--version", "1.1.0", "-t", "pico_w"
    )
    sha = hashlib.sha256(good).hexdigest()
    assert rel["sha256"] == sha and rel["size"] == len(good)
    assert (settings.data_path / "artifacts" / sha).read_bytes() == good
    assert rel["artifact_url"] == f"http://127.0.0.1:{settings.http_port}/ota/artifacts/{sha}"
    row = await pool.fetchrow("SELECT * FROM ota_release")
    assert row["version"] == "1.1.0" and row["key_id"] == signer.key_id
    Ed25519PublicKey.from_public_bytes(signer.public_raw).verify(
        base64.b64decode(row["sig"]), row["manifest"].encode()
    )
    assert json.loads(row["manifest"])["sha256"] == sha

    refusals = {
        "already exists": (write("dup.py", app_source("other")), "1.1.0"),
        "empty": (write("empty.py", b""), "1.2.0"),
        "limit": (write("big.py", b"#" * 300 * 1024 + b"\n"), "1.3.0"),
        "does not compile": (write("bad.py", b"def broken(:\n    pass\n"), "1.4.0"),
        "MAJOR.MINOR.PATCH": (write("v.py", good), "1.5"),
    }
    for expected, (path, version) in refusals.items():
        rc, _, err = await picofleet(settings, "ota", "release", path, "--version", version)
        assert rc == 1, (expected, err)
        assert expected in err, (expected, err)
    assert await pool.fetchval("SELECT count(*) FROM ota_release") == 1
    # Nothing of the refused files reached the store.
    assert [p.name for p in (settings.data_path / "artifacts").iterdir()] == [sha]

    # The size limit is a setting.
    rc, _, err = await picofleet(
        settings,
        "ota",
        "release",
        write("small.py", app_source("2.0.0")),
        "--version",
        "2.0.0",
        PICOFLEET_OTA_MAX_ARTIFACT_BYTES="16",
    )
    assert rc == 1 and "limit" in err


async def test_release_compiles_for_the_core_of_its_device_type(
    settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """Native code compiles only for a named core: a Pico W (armv6m) or Pico 2 W (armv7emsp)
    release with it is accepted, a type whose core the hub does not know refuses it."""
    await picofleet(settings, "keys", "init")
    native = app_source("3.0.0") + b"\n@micropython.native\ndef twice(x):\n    return 2 * x\n"
    f = tmp_path / "main.py"
    f.write_bytes(native)
    for device_type in ("pico_w", "pico2_w"):
        rel = await picofleet_json(
            settings, "ota", "release", str(f), "--version", "3.0.0", "-t", device_type
        )
        assert rel["device_type"] == device_type
    rc, _, err = await picofleet(
        settings, "ota", "release", str(f), "--version", "3.0.0", "-t", "pico_usb"
    )
    assert rc == 1 and "does not compile" in err
    types = await pool.fetch("SELECT device_type FROM ota_release ORDER BY 1")
    assert [r["device_type"] for r in types] == ["pico2_w", "pico_w"]
