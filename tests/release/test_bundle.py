"""The Pi release bundle: reproducible, complete, and refused once tampered with."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from picofleet.core.firmware import firmware_version
from picofleet.release.bundle import BundleFile, build_bundle, iso_utc, write_tarball
from picofleet.release.signing import (
    BundleMeta,
    BundleRefused,
    ReleaseError,
    bundle_name,
    generate_key,
    load_private_key,
    load_public_key,
    public_raw,
    sign_bundle,
    verify_bundle,
)
from tests.conftest import need
from tests.release.conftest import EPOCH, ROOT, VERSION, Bundles, clean_env

TOP = f"picofleet-{VERSION}"


def members(tarball: Path) -> dict[str, bytes]:
    with tarfile.open(tarball) as tar:
        return {
            m.name.removeprefix(f"{TOP}/"): tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def tree_files(root: Path, sub: str) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted((root / sub).rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".mpy")
    }


def test_same_source_gives_the_same_bytes(bundles: Bundles) -> None:
    a, b = bundles.first, bundles.second
    assert a.tarball.read_bytes() == b.tarball.read_bytes()
    assert a.meta.sha256 == b.meta.sha256 == hashlib.sha256(a.tarball.read_bytes()).hexdigest()
    assert a.wheel.read_bytes() == b.wheel.read_bytes()
    # Ed25519 signatures are deterministic: the whole meta.json is reproducible too.
    assert a.meta_path.read_text() == b.meta_path.read_text()


def test_tarball_is_normalised(bundles: Bundles) -> None:
    raw = bundles.first.tarball.read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\0\0\0\0", "gzip mtime must be 0"
    assert not raw[3] & 0x08, "gzip header must carry no file name"
    with tarfile.open(bundles.first.tarball) as tar:
        infos = tar.getmembers()
    names = [m.name for m in infos]
    assert names == sorted(names) and names[0] == TOP
    for m in infos:
        assert m.name == TOP or m.name.startswith(f"{TOP}/")
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (EPOCH, 0, 0, "", "")
        assert m.mode in (0o644, 0o755)


def test_bundle_holds_what_a_pi_installs(bundles: Bundles, snapshot: Path) -> None:
    files = members(bundles.first.tarball)
    meta = bundles.first.meta
    assert files[f"wheels/{bundles.first.wheel.name}"] == bundles.first.wheel.read_bytes()
    assert files["requirements.lock"] == (snapshot / "release/requirements.lock").read_bytes()
    for sub in ("sql", "pico_w", "pico_usb"):
        expected = tree_files(snapshot, sub)
        assert expected, f"{sub}/ is empty in the source tree"
        assert {k: v for k, v in files.items() if k.startswith(f"{sub}/")} == expected
    if (snapshot / "deploy").is_dir():
        assert {k: v for k, v in files.items() if k.startswith("deploy/")} == tree_files(
            snapshot, "deploy"
        )
    assert files["CHANGELOG.md"] == (snapshot / "CHANGELOG.md").read_bytes()
    info = json.loads(files["BUILD_INFO.json"])
    assert info == {
        "version": VERSION,
        "commit": meta.commit,
        "created_at": meta.created_at,
        "firmware": meta.firmware,
    }
    sums = files["SHA256SUMS"].decode().splitlines()
    assert len(sums) == len(files) - 1
    for line in sums:
        digest, name = line.split("  ", 1)
        assert hashlib.sha256(files[name]).hexdigest() == digest, name


def test_meta_json_is_the_deploy_contract(bundles: Bundles) -> None:
    data = json.loads(bundles.first.meta_path.read_text())
    assert set(data) == {
        "version",
        "sha256",
        "signature",
        "key_id",
        "created_at",
        "commit",
        "firmware",
    }
    assert data["version"] == VERSION
    assert data["sha256"] == hashlib.sha256(bundles.first.tarball.read_bytes()).hexdigest()
    public = load_public_key(bundles.pubkey)
    assert data["key_id"] == hashlib.sha256(public_raw(public)).hexdigest()[:16]
    # The signature covers the UTF-8 bytes of the lowercase hex digest, nothing else.
    public.verify(base64.b64decode(data["signature"]), data["sha256"].encode())
    assert data["created_at"] == iso_utc(EPOCH) == "2026-01-01T00:00:00Z"
    assert data["commit"] == bundles.commit
    assert set(data["firmware"]) <= {"pico_w", "pico_usb"}


def test_wheel_carries_build_info_sql_and_firmware(bundles: Bundles, snapshot: Path) -> None:
    with zipfile.ZipFile(bundles.first.wheel) as whl:
        names = set(whl.namelist())
        info = json.loads(whl.read("picofleet/core/build_info.json"))
    assert info == {"version": VERSION, "commit": bundles.commit, "created_at": iso_utc(EPOCH)}
    for sub in ("sql", "pico_w", "pico_usb"):
        for rel in tree_files(snapshot, sub):
            assert f"picofleet/{rel}" in names


@pytest.mark.parametrize("name", ["pico_w", "pico_usb"])
def test_firmware_versions_are_recorded(bundles: Bundles, snapshot: Path, name: str) -> None:
    version = firmware_version(snapshot / name)
    assert version, f"{name} carries no VERSION literal (pico_w/main.py, pico_usb/proto.py)"
    assert bundles.first.meta.firmware[name] == version


# -- tampering ---------------------------------------------------------------------------------
def _repacked(tarball: Path, dest: Path) -> None:
    """The same bundle with one migration changed, packed as carefully as the real one."""
    files = members(tarball)
    files["sql/0001_core.sql"] += b"\nDROP TABLE device;\n"
    write_tarball(dest, TOP, {k: BundleFile(v, False) for k, v in files.items()}, EPOCH)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


Tamper = Callable[[Bundles, Path, Path], BundleMeta]


def _flipped(b: Bundles, src: Path, dst: Path) -> BundleMeta:
    _flip(dst)
    return b.first.meta


def _repack(b: Bundles, src: Path, dst: Path) -> BundleMeta:
    _repacked(src, dst)
    return b.first.meta


def _meta_follows(b: Bundles, src: Path, dst: Path) -> BundleMeta:
    _repacked(src, dst)
    return dataclasses.replace(b.first.meta, sha256=hashlib.sha256(dst.read_bytes()).hexdigest())


def _attacker_key(b: Bundles, src: Path, dst: Path) -> BundleMeta:
    _repacked(src, dst)
    m = b.first.meta
    return sign_bundle(
        dst,
        version=m.version,
        key=Ed25519PrivateKey.generate(),
        created_at=m.created_at,
        commit=m.commit,
        firmware=m.firmware,
    )


def _forged_key_id(b: Bundles, src: Path, dst: Path) -> BundleMeta:
    return dataclasses.replace(_attacker_key(b, src, dst), key_id=b.first.meta.key_id)


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (_flipped, "hash_mismatch"),
        (_repack, "hash_mismatch"),
        (_meta_follows, "sig_invalid"),
        (_attacker_key, "key_unknown"),
        (_forged_key_id, "sig_invalid"),
    ],
)
def test_tampered_bundle_is_refused(
    bundles: Bundles, tmp_path: Path, tamper: Tamper, reason: str
) -> None:
    dst = tmp_path / bundle_name(VERSION)
    shutil.copyfile(bundles.first.tarball, dst)
    meta = tamper(bundles, bundles.first.tarball, dst)
    with pytest.raises(BundleRefused) as err:
        verify_bundle(dst, meta, load_public_key(bundles.pubkey))
    assert err.value.reason == reason


def test_wrong_name_version_or_meta_is_refused(bundles: Bundles, tmp_path: Path) -> None:
    public = load_public_key(bundles.pubkey)
    verify_bundle(bundles.first.tarball, bundles.first.meta, public, expect_version=VERSION)
    with pytest.raises(BundleRefused) as err:
        verify_bundle(bundles.first.tarball, bundles.first.meta, public, expect_version="9.9.9")
    assert err.value.reason == "version_mismatch"
    renamed = tmp_path / "picofleet-9.9.9.tar.gz"
    shutil.copyfile(bundles.first.tarball, renamed)
    with pytest.raises(BundleRefused) as err:
        verify_bundle(renamed, bundles.first.meta, public)
    assert err.value.reason == "name_mismatch"
    for bad in (b"not json", b"[]", b'{"version": "0.1.0"}'):
        with pytest.raises(BundleRefused) as err:
            BundleMeta.from_json(bad)
        assert err.value.reason == "bad_meta"


def _verifiers(tarball: Path, pubkey: Path, meta: Path) -> list[list[str]]:
    args = [str(tarball), "--pubkey", str(pubkey), "--meta", str(meta)]
    return [
        [sys.executable, "-m", "picofleet", "release", "verify", *args],
        [sys.executable, str(ROOT / "release" / "verify_bundle.py"), *args],
    ]


def test_verifier_commands_accept_then_refuse(bundles: Bundles, tmp_path: Path) -> None:
    good = tmp_path / "good" / bundle_name(VERSION)
    bad = tmp_path / "bad" / bundle_name(VERSION)
    for path in (good, bad):
        path.parent.mkdir()
        shutil.copyfile(bundles.first.tarball, path)
        shutil.copyfile(bundles.first.meta_path, path.with_name("meta.json"))
    _flip(bad)
    for path, code in ((good, 0), (bad, 1)):
        for cmd in _verifiers(path, bundles.pubkey, path.with_name("meta.json")):
            res = subprocess.run(
                cmd, capture_output=True, text=True, env=clean_env(), timeout=120, check=False
            )
            assert res.returncode == code, (cmd, res.stdout, res.stderr)
            if code:
                assert "bundle refused: hash_mismatch" in res.stderr


def test_openssl_accepts_the_same_signature(bundles: Bundles, tmp_path: Path) -> None:
    """The OpenSSL check in picofleet/release/signing.py, for a Pi without picofleet yet."""
    need(bool(shutil.which("openssl")), "openssl")
    meta = bundles.first.meta
    msg, sig = tmp_path / "msg", tmp_path / "sig"
    sig.write_bytes(base64.b64decode(meta.signature))

    def openssl_verify(sha: str) -> int:
        msg.write_text(sha)
        cmd = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(bundles.pubkey)]
        cmd += ["-rawin", "-in", str(msg), "-sigfile", str(sig)]
        return subprocess.run(cmd, capture_output=True, check=False).returncode

    assert openssl_verify(meta.sha256) == 0
    tampered = bundles.first.tarball.read_bytes() + b"\0"
    assert openssl_verify(hashlib.sha256(tampered).hexdigest()) != 0


# -- refusing to build -------------------------------------------------------------------------
def test_build_refuses_a_dirty_tree_and_a_wrong_version(
    snapshot: Path, tmp_path: Path, bundles: Bundles
) -> None:
    tree = tmp_path / "src"
    shutil.copytree(snapshot, tree, symlinks=True)
    key = load_private_key(bundles.key)
    with pytest.raises(ReleaseError, match=r"pyproject\.toml says"):
        build_bundle(tree, "9.9.9", tmp_path / "out", key)
    (tree / "sql" / "0099_new.sql").write_text("SELECT 1;\n")
    with pytest.raises(ReleaseError, match="uncommitted changes"):
        build_bundle(tree, VERSION, tmp_path / "out", key)
    with pytest.raises(ReleaseError, match=r"not MAJOR\.MINOR\.PATCH"):
        build_bundle(tree, "v1.0", tmp_path / "out", key)


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    key = tmp_path / "k" / "release.key"
    generate_key(key)
    assert key.stat().st_mode & 0o777 == 0o600
    with pytest.raises(ReleaseError, match="already exists"):
        generate_key(key)
    key.chmod(0o644)
    with pytest.raises(ReleaseError, match="chmod 600"):
        load_private_key(key)


def test_make_release_runs_the_bundle_script() -> None:
    res = subprocess.run(
        ["make", "-n", "release", "VERSION=1.2.3", "RELEASE_KEY=/k", "ALLOW_DIRTY=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    cmd = res.stdout.replace("\\\n", " ")
    assert 'release/build_bundle.py --version "1.2.3"' in cmd
    assert '--key "/k"' in cmd and "--allow-dirty" in cmd
