"""deploy/deploy.sh in a temporary prefix, with a fake service manager that records its calls
and a fake smoke test that passes only for releases that ship a ``healthy`` marker."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import need

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "deploy.sh"
# Fails unless the release now `current` ships a `healthy` file; logs what it saw.
SMOKE = 'echo "smoke $(readlink "$PICOFLEET_PREFIX/current")" >>"$CALLS"; '
SMOKE += 'test -e "$PICOFLEET_PREFIX/current/healthy"'


@dataclass
class Site:
    root: Path
    prefix: Path
    calls: Path
    key: Ed25519PrivateKey
    pubkey: Path

    def bundle(
        self, version: str, *, healthy: bool = True, sign: bool = True, nested: bool = True
    ) -> Path:
        """picofleet-<version>.tar.gz (+ .meta.json) with an install.sh that leaves a mark."""
        files = {
            "VERSION": version,
            "install.sh": 'echo "$PWD" > installed\n',
        }
        if healthy:
            files["healthy"] = "yes"
        path = self.root / f"picofleet-{version}.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            for name, text in files.items():
                data = text.encode()
                info = tarfile.TarInfo(f"picofleet-{version}/{name}" if nested else name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        meta = {
            "version": version,
            "sha256": _sha256(path),
            "created_at": 1_763_000_000,
        }
        if sign:
            message = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
            meta["signature"] = base64.b64encode(self.key.sign(message)).decode()
        path.with_name(f"picofleet-{version}.meta.json").write_text(json.dumps(meta))
        return path

    def deploy(self, bundle: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        full = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PICOFLEET_")},
            "PICOFLEET_PREFIX": str(self.prefix),
            "PICOFLEET_SERVICE_CMD": f"{self.root / 'fake-systemctl'} --no-ask-password",
            "PICOFLEET_SERVICES": "picofleet.service picofleet-usb.service",
            "PICOFLEET_SMOKE_CMD": SMOKE,
            "PICOFLEET_RELEASE_PUBKEY": str(self.pubkey),
            "PICOFLEET_PYTHON": sys.executable,
            "CALLS": str(self.calls),
            **env,
        }
        return subprocess.run(
            ["bash", str(DEPLOY), *args, str(bundle)],
            env=full,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    @property
    def current(self) -> str:
        return os.readlink(self.prefix / "current")

    def take_calls(self) -> list[str]:
        lines = self.calls.read_text().splitlines() if self.calls.exists() else []
        self.calls.unlink(missing_ok=True)
        return lines


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def site(tmp_path: Path) -> Site:
    calls = tmp_path / "calls.log"
    fake = tmp_path / "fake-systemctl"
    fake.write_text(f'#!/bin/sh\necho "systemctl $*" >> {calls}\n')
    fake.chmod(0o755)
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pubkey = tmp_path / "release.pub"
    pubkey.write_text(base64.b64encode(raw).decode() + "\n")  # as config.json holds it
    return Site(tmp_path, tmp_path / "opt" / "picofleet", calls, key, pubkey)


RESTART = "systemctl --no-ask-password restart picofleet.service picofleet-usb.service"


def test_good_releases_go_live_and_a_failing_one_is_rolled_back(site: Site) -> None:
    r = site.deploy(site.bundle("1.0.0"))
    assert r.returncode == 0, r.stderr
    assert site.current == "releases/1.0.0"
    assert (site.prefix / "releases/1.0.0/installed").read_text().strip() == str(
        site.prefix / "releases/1.0.0"
    )  # the bundle's install.sh ran in place, its top-level directory stripped
    assert site.take_calls() == [RESTART, "smoke releases/1.0.0"]

    r = site.deploy(site.bundle("1.1.0"))
    assert r.returncode == 0, r.stderr
    assert (site.current, os.readlink(site.prefix / "previous")) == (
        "releases/1.1.0",
        "releases/1.0.0",
    )
    site.take_calls()

    r = site.deploy(site.bundle("1.2.0", healthy=False))
    assert r.returncode == 1
    assert site.current == "releases/1.1.0"  # the previous one serves again
    assert site.take_calls() == [RESTART, "smoke releases/1.2.0", RESTART, "smoke releases/1.1.0"]
    assert (site.prefix / "releases/1.2.0/.failed").exists()
    assert "rolling back to 1.1.0" in r.stderr and "passes its smoke test" in r.stderr
    log = (site.prefix / "deploy.log").read_text()
    assert "deployed 1.0.0" in log and "deployed 1.1.0" in log and "1.2.0 failed" in log

    r = site.deploy(site.bundle("1.1.0"))  # already current: nothing restarts
    assert r.returncode == 0 and "already current" in r.stderr
    assert site.take_calls() == []


def test_first_release_failing_its_smoke_test_stops_the_service(site: Site) -> None:
    r = site.deploy(site.bundle("1.0.0", healthy=False))
    assert r.returncode == 1
    assert not (site.prefix / "current").exists()
    assert site.take_calls() == [
        RESTART,
        "smoke releases/1.0.0",
        "systemctl --no-ask-password stop picofleet.service picofleet-usb.service",
    ]


def test_tampered_bundle_is_refused_before_anything_changes(site: Site) -> None:
    assert site.deploy(site.bundle("1.0.0")).returncode == 0
    site.take_calls()
    bundle = site.bundle("2.0.0")
    with bundle.open("ab") as f:
        f.write(b"\0")
    r = site.deploy(bundle)
    assert r.returncode == 1 and "checksum mismatch" in r.stderr
    assert site.current == "releases/1.0.0"
    assert not (site.prefix / "releases/2.0.0").exists()
    assert site.take_calls() == []


@pytest.mark.parametrize("verifier", ["openssl", "python"])
def test_signature_is_checked(site: Site, verifier: str) -> None:
    if verifier == "openssl":
        need(shutil.which("openssl") is not None, "openssl")
    env = {"PICOFLEET_VERIFY_WITH": verifier}
    good = site.bundle("1.0.0")
    assert site.deploy(good, **env).returncode == 0

    forged = site.bundle("1.1.0")
    meta_path = forged.with_name("picofleet-1.1.0.meta.json")
    meta = json.loads(meta_path.read_text())
    other = Ed25519PrivateKey.generate()
    unsigned = {k: v for k, v in meta.items() if k != "signature"}
    message = json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode()
    meta["signature"] = base64.b64encode(other.sign(message)).decode()
    meta_path.write_text(json.dumps(meta))
    r = site.deploy(forged, **env)
    assert r.returncode == 1 and "does not verify" in r.stderr
    assert site.current == "releases/1.0.0"

    meta["version"] = "1.1.1"  # signed fields cannot be edited either
    meta["signature"] = base64.b64encode(site.key.sign(message)).decode()
    meta_path.write_text(json.dumps(meta))
    assert site.deploy(forged, **env).returncode == 1


def test_unsigned_or_unchecked_bundles(site: Site) -> None:
    bundle = site.bundle("1.0.0", sign=False, nested=False)
    r = site.deploy(bundle, PICOFLEET_REQUIRE_SIGNATURE="1")
    assert r.returncode == 1 and "unsigned bundle refused" in r.stderr
    r = site.deploy(bundle)
    assert r.returncode == 0 and "not signed; checksum only" in r.stderr
    assert (site.prefix / "releases/1.0.0/VERSION").read_text() == "1.0.0"

    bare = site.root / "bare.tar.gz"  # no meta.json beside it, no version in its name
    shutil.copy(site.bundle("1.1.0"), bare)
    r = site.deploy(bare, "--version", "1.1.0")
    assert r.returncode == 1 and "no checksum" in r.stderr
    r = site.deploy(bare, "--version", "1.1.0", "--sha256", _sha256(bare))
    assert r.returncode == 0, r.stderr
    assert site.current == "releases/1.1.0"


def test_old_releases_are_pruned(site: Site) -> None:
    for i in range(6):
        assert site.deploy(site.bundle(f"1.{i}.0"), PICOFLEET_KEEP_RELEASES="1").returncode == 0
    kept = sorted(p.name for p in (site.prefix / "releases").iterdir())
    assert kept == ["1.3.0", "1.4.0", "1.5.0"]  # current, previous, one more
