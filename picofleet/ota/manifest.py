"""Manifests and the signed meta of the wire contract.

    meta = {"manifest": "<JSON text>", "sig": "<base64 Ed25519 over the manifest bytes>",
            "key_id": "<16 hex>"}

Devices verify the signature over the exact manifest bytes before parsing them, so the
manifest text is produced once, here, and stored as text; nobody re-serialises it.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from picofleet.core.endpoints import public_url
from picofleet.core.errors import Invalid
from picofleet.core.settings import Settings
from picofleet.core.signing import Signer
from picofleet.ota.model import CHANNELS, DEVICE_TYPE_RE, SEMVER_RE

ACTIONS = ("install", "rollback", "pin")


def parse_version(version: str) -> tuple[int, int, int]:
    m = SEMVER_RE.match(version)
    if m is None:
        raise Invalid(f"version {version!r} is not MAJOR.MINOR.PATCH (e.g. 1.1.0)")
    return int(m[1]), int(m[2]), int(m[3])


def check_device_type(device_type: str) -> str:
    if not DEVICE_TYPE_RE.match(device_type):
        raise Invalid(f"device type {device_type!r} must match [A-Za-z0-9_-]{{1,32}}")
    return device_type


def check_channel(channel: str) -> str:
    if channel not in CHANNELS:
        raise Invalid(f"channel must be one of {', '.join(CHANNELS)}")
    return channel


def artifact_url(settings: Settings, sha256: str) -> str:
    """Under the hub's public URL (picofleet/core/endpoints.py): the address devices reach."""
    return f"{public_url(settings)}/ota/artifacts/{sha256}"


def manifest_text(fields: dict[str, Any]) -> str:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def rollout_manifest(
    *,
    settings: Settings,
    version: str,
    device_type: str,
    channel: str,
    sha256: str,
    size: int,
    rollout: int,
    action: str,
    created_at: int | None = None,
) -> str:
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    return manifest_text(
        {
            "version": version,
            "device_type": device_type,
            "channel": channel,
            "sha256": sha256,
            "size": size,
            "artifact_url": artifact_url(settings, sha256),
            "created_at": int(time.time()) if created_at is None else created_at,
            "rollout": str(rollout),
            "action": action,
        }
    )


def sign(signer: Signer, manifest: str) -> tuple[str, str]:
    """(base64 signature, key id) over the UTF-8 bytes of ``manifest``."""
    return base64.b64encode(signer.sign(manifest.encode())).decode(), signer.key_id


def signed_meta(signer: Signer, manifest: str) -> str:
    """The retained payload of an OTA topic."""
    sig, kid = sign(signer, manifest)
    return json.dumps({"manifest": manifest, "sig": sig, "key_id": kid}, separators=(",", ":"))
