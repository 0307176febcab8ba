"""Test vectors for the firmware's pure modules, computed on CPython by the reference
implementations (hashlib, hmac, cryptography, FleetKeys) and handed to MicroPython as JSON."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from picofleet.core.credentials import FleetKeys

SHA512_LENGTHS = (0, 1, 3, 55, 111, 112, 113, 127, 128, 129, 239, 240, 256, 1000)

# RFC 8032 section 7.1: TEST 1, 2, 3 and TEST SHA(abc): (name, public key, message, signature)
RFC8032 = [
    (
        "TEST 1",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bac"
        "c61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "TEST 2",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e"
        "458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "TEST 3",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290"
        "ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
    (
        "TEST SHA(abc)",
        "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ec"
        "fdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
    ),
]


def pattern(n: int) -> bytes:
    return bytes((i * 7 + 3) & 0xFF for i in range(n))


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


def manifest(**over: Any) -> str:
    fields: dict[str, Any] = {
        "version": "1.1.0",
        "device_type": "pico_w",
        "channel": "stable",
        "sha256": hashlib.sha256(b"artifact").hexdigest(),
        "size": 8,
        "artifact_url": "http://127.0.0.1:8000/ota/artifacts/x",
        "created_at": 1_763_000_000,
        "rollout": "7",
        "action": "install",
    }
    fields.update(over)
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def signed_meta(key: Ed25519PrivateKey, text: str, *, kid: str | None = None) -> str:
    sig = base64.b64encode(key.sign(text.encode())).decode()
    return json.dumps({"manifest": text, "sig": sig, "key_id": kid or key_id(raw_public(key))})


def build(keys: FleetKeys) -> dict[str, Any]:
    signer = Ed25519PrivateKey.generate()
    other = Ed25519PrivateKey.generate()
    made = []
    for n in (0, 1, 64, 400, 1500):
        k = Ed25519PrivateKey.generate()
        m = pattern(n)
        made.append([raw_public(k).hex(), m.hex(), k.sign(m).hex()])
    good = manifest()
    kid = key_id(raw_public(signer))
    metas = {
        "good": signed_meta(signer, good),
        "tampered": json.dumps(
            {**json.loads(signed_meta(signer, good)), "manifest": good.replace("1.1.0", "1.1.1")}
        ),
        "other_signer": signed_meta(other, good, kid=kid),
        "wrong_key_id": signed_meta(other, good),
        "bad_sig_b64": json.dumps({"manifest": good, "sig": "***", "key_id": kid}),
        "bad_manifest": signed_meta(signer, manifest(sha256="nothex")),
        # an `ota rollback` to 1.0.0, an older and a newer one, and the rollout that follows
        **{
            name: signed_meta(
                signer,
                manifest(
                    version="1.0.0",
                    action="rollback",
                    created_at=at,
                    rollout="8",
                    sha256=hashlib.sha256(b"old").hexdigest(),
                ),
            )
            for name, at in (
                ("rollback", 1_763_000_500),
                ("rollback_older", 1_763_000_400),
                ("rollback_newer", 1_763_000_900),
            )
        },
        "rollout_after": signed_meta(
            signer,
            manifest(
                version="1.2.0",
                created_at=1_763_000_600,
                rollout="9",
                sha256=hashlib.sha256(b"new").hexdigest(),
            ),
        ),
    }
    serial, ts, nonce = "E6614103E7452D2F", 1_763_000_123, "0123456789abcdef"
    return {
        "sha512": [[n, hashlib.sha512(pattern(n)).hexdigest()] for n in SHA512_LENGTHS],
        "ed25519": {"rfc": [list(v) for v in RFC8032], "made": made},
        "hmac": [
            [k.hex(), msg, hmac.new(k, msg.encode(), hashlib.sha256).hexdigest()]
            for k, msg in ((b"k" * 100, "long key"), (b"", "empty key"), (b"x" * 64, "block"))
        ],
        "token": {
            "serial": serial,
            "ts": ts,
            "nonce": nonce,
            "provision_key": keys.provision_key(serial),
            "expected": keys.device_startup_token(serial, ts, nonce),
        },
        "ota": {
            "pubkey": base64.b64encode(raw_public(signer)).decode(),
            "key_id": kid,
            "metas": metas,
        },
    }
