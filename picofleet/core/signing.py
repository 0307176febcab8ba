"""The fleet's Ed25519 signing key: created once, private part 0600 in the data dir.

Devices hold only the public key (``ota_pubkey`` in config.json, base64 of the raw 32 bytes)
and its id (first 16 hex of its sha256), so a stolen device cannot sign firmware.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from picofleet.core.errors import Conflict, NoSigningKey
from picofleet.core.files import replace_file

KEY_DIR = "ota"
PRIVATE_FILE = "signing.key"
PUBLIC_FILE = "signing.pub"


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


def key_paths(data_path: Path) -> tuple[Path, Path]:
    root = data_path / KEY_DIR
    return root / PRIVATE_FILE, root / PUBLIC_FILE


class Signer:
    """One private key; signs manifests."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public_raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public_raw).decode()

    @property
    def key_id(self) -> str:
        return key_id(self.public_raw)

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)


def init_keys(data_path: Path, *, force: bool = False) -> Signer:
    """Create the signing key; refuses to replace an existing one unless ``force``."""
    private_path, public_path = key_paths(data_path)
    if private_path.exists() and not force:
        raise Conflict(
            f"a signing key already exists at {private_path}; devices trust it. "
            "Use --force to replace it (every device then needs the new public key)."
        )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(private_path.parent, 0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    replace_file(private_path, pem, 0o600)
    signer = Signer(key)
    replace_file(public_path, f"{signer.public_b64}\n".encode(), 0o644)
    return signer


def load_signer(data_path: Path) -> Signer:
    private_path, _ = key_paths(data_path)
    try:
        st = private_path.stat()
    except FileNotFoundError:
        raise NoSigningKey(
            f"no signing key at {private_path}; run `picofleet keys init` first"
        ) from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise NoSigningKey(
            f"{private_path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); "
            "chmod 600 it"
        )
    key = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise NoSigningKey(f"{private_path} is not an Ed25519 private key")
    return Signer(key)
