"""Ed25519-signed release bundles: the release key, meta.json, and the check before install.

``meta.json`` sits next to ``picofleet-X.Y.Z.tar.gz``; it is the contract with
``deploy/deploy.sh``::

    {"version": "X.Y.Z", "sha256": "<hex of the tarball>",
     "signature": "<base64 Ed25519 over the UTF-8 bytes of the lowercase hex sha256>",
     "key_id": "<first 16 hex of sha256(raw 32-byte public key)>",
     "created_at": "<ISO 8601 UTC>", "commit": "<git sha>",
     "firmware": {"pico_w": "X.Y.Z", "pico_usb": "X.Y.Z"}}

The same check with OpenSSL 3 alone (a Pi with no picofleet installed yet)::

    sha=$(sha256sum picofleet-X.Y.Z.tar.gz | cut -d' ' -f1)       # must equal meta.sha256
    printf %s "$sha" > msg; printf %s "$signature" | base64 -d > sig
    openssl pkeyutl -verify -pubin -inkey release.pub -rawin -in msg -sigfile sig

The release key is a PEM (PKCS#8) Ed25519 private key: ``--key FILE`` or the environment
variable ``PICOFLEET_RELEASE_KEY`` (a path, or the PEM text itself as CI secrets hold it).
It is not the OTA key (``picofleet keys init``): the OTA key lives on the hub and signs
firmware, the release key lives in CI and signs the hub's own software.

Exceptions::

    ReleaseError          something a release operator can fix (key file, version, tree)
     └─ BundleRefused     a bundle failed verification; ``.reason`` names the check
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from picofleet.core.signing import key_id as _key_id_of_raw

KEY_ENV = "PICOFLEET_RELEASE_KEY"
META_FILE = "meta.json"
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_CHUNK = 1 << 20


class ReleaseError(Exception):
    """A release step failed for a reason the operator can fix."""


class BundleRefused(ReleaseError):
    """A bundle failed verification and must not be installed."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason  # bad_meta | name_mismatch | version_mismatch | key_unknown |
        #                       hash_mismatch | sig_invalid


def bundle_name(version: str) -> str:
    return f"picofleet-{version}.tar.gz"


def check_version(version: str) -> str:
    if not SEMVER.match(version):
        raise ReleaseError(f"version {version!r} is not MAJOR.MINOR.PATCH")
    return version


# -- keys --------------------------------------------------------------------------------------
def public_raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: Ed25519PublicKey) -> str:
    """First 16 hex of sha256(raw public key): the same rule as the OTA key id."""
    return _key_id_of_raw(public_raw(public))


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_path_for(private_path: Path) -> Path:
    """``release.key`` -> ``release.pub``; any other name gets ``.pub`` appended."""
    if private_path.suffix == ".key":
        return private_path.with_suffix(".pub")
    return private_path.with_name(private_path.name + ".pub")


def _private_from_pem(pem: bytes, where: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ReleaseError(f"{where}: not a PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ReleaseError(f"{where}: not an Ed25519 private key")
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        pem = path.read_bytes()
    except OSError as exc:
        raise ReleaseError(f"cannot read release key {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise ReleaseError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
    return _private_from_pem(pem, str(path))


def release_key(path: Path | None) -> Ed25519PrivateKey:
    """The key given by ``--key``, else by ``PICOFLEET_RELEASE_KEY`` (a path or PEM text)."""
    if path is not None:
        return load_private_key(path)
    value = os.environ.get(KEY_ENV, "").strip()
    if value.startswith("-----BEGIN"):
        return _private_from_pem(value.encode(), KEY_ENV)
    if value:
        return load_private_key(Path(value))
    raise ReleaseError(
        f"no release key: pass --key FILE or set {KEY_ENV} "
        "(create one with `picofleet release keygen FILE`)"
    )


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A PEM public key, a PEM private key (its public half), or base64 of the raw 32 bytes."""
    try:
        data = path.read_bytes().strip()
    except OSError as exc:
        raise ReleaseError(f"cannot read public key {path}: {exc.strerror}") from None
    try:
        if data.startswith(b"-----BEGIN PUBLIC KEY"):
            key = serialization.load_pem_public_key(data)
            if isinstance(key, Ed25519PublicKey):
                return key
        elif data.startswith(b"-----BEGIN"):
            return _private_from_pem(data, str(path)).public_key()
        else:
            raw = base64.b64decode(data, validate=True)
            if len(raw) == 32:
                return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, binascii.Error):
        pass
    raise ReleaseError(f"{path}: not an Ed25519 public key (PEM or base64 of 32 raw bytes)")


def generate_key(path: Path, *, force: bool = False) -> Ed25519PrivateKey:
    """Write a new key to ``path`` (mode 0600) and its public half (PEM) beside it."""
    pub_path = public_path_for(path)
    if not force and (path.exists() or pub_path.exists()):
        raise ReleaseError(f"{path} already exists; use --force to replace it")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_path.write_bytes(public_pem(key.public_key()))
    return key


# -- meta.json ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BundleMeta:
    version: str
    sha256: str
    signature: str
    key_id: str
    created_at: str
    commit: str
    firmware: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        data = {
            "version": self.version,
            "sha256": self.sha256,
            "signature": self.signature,
            "key_id": self.key_id,
            "created_at": self.created_at,
            "commit": self.commit,
            "firmware": dict(sorted(self.firmware.items())),
        }
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> BundleMeta:
        try:
            data: Any = json.loads(text)
        except ValueError as exc:
            raise BundleRefused("bad_meta", f"meta.json is not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise BundleRefused("bad_meta", "meta.json is not an object")
        fields = ("version", "sha256", "signature", "key_id", "created_at", "commit")
        missing = [k for k in fields if not isinstance(data.get(k), str)]
        if missing:
            raise BundleRefused("bad_meta", f"meta.json lacks {', '.join(missing)}")
        firmware = data.get("firmware") or {}
        if not isinstance(firmware, dict) or not all(isinstance(v, str) for v in firmware.values()):
            raise BundleRefused("bad_meta", "meta.json firmware must map names to versions")
        if not SEMVER.match(data["version"]):
            raise BundleRefused("bad_meta", f"version {data['version']!r} is not X.Y.Z")
        if not _HEX64.match(data["sha256"]) or not _HEX16.match(data["key_id"]):
            raise BundleRefused("bad_meta", "sha256 / key_id are not lowercase hex")
        return cls(**{k: data[k] for k in fields}, firmware=dict(firmware))

    @classmethod
    def load(cls, path: Path) -> BundleMeta:
        try:
            return cls.from_json(path.read_bytes())
        except OSError as exc:
            raise BundleRefused("bad_meta", f"cannot read {path}: {exc.strerror}") from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sign_bundle(
    tarball: Path,
    *,
    version: str,
    key: Ed25519PrivateKey,
    created_at: str,
    commit: str,
    firmware: dict[str, str],
) -> BundleMeta:
    sha = sha256_file(tarball)
    signature = key.sign(sha.encode("utf-8"))
    return BundleMeta(
        version=check_version(version),
        sha256=sha,
        signature=base64.b64encode(signature).decode("ascii"),
        key_id=key_id(key.public_key()),
        created_at=created_at,
        commit=commit,
        firmware=firmware,
    )


def verify_bundle(
    tarball: Path,
    meta: BundleMeta,
    public: Ed25519PublicKey,
    *,
    expect_version: str | None = None,
) -> None:
    """Raise BundleRefused unless ``tarball`` is exactly what ``public``'s owner signed."""
    if tarball.name != bundle_name(meta.version):
        raise BundleRefused(
            "name_mismatch", f"{tarball.name} is not {bundle_name(meta.version)} (meta.version)"
        )
    if expect_version is not None and meta.version != expect_version:
        raise BundleRefused(
            "version_mismatch", f"bundle is {meta.version}, expected {expect_version}"
        )
    if meta.key_id != key_id(public):
        raise BundleRefused(
            "key_unknown", f"signed by key {meta.key_id}, trusted key is {key_id(public)}"
        )
    try:
        actual = sha256_file(tarball)
    except OSError as exc:
        raise BundleRefused("hash_mismatch", f"cannot read {tarball}: {exc.strerror}") from None
    if not hmac.compare_digest(actual, meta.sha256):
        raise BundleRefused("hash_mismatch", f"sha256 is {actual}, meta.json says {meta.sha256}")
    try:
        signature = base64.b64decode(meta.signature, validate=True)
        public.verify(signature, meta.sha256.encode("utf-8"))
    except (binascii.Error, ValueError, InvalidSignature):
        raise BundleRefused("sig_invalid", "signature does not match the sha256") from None
