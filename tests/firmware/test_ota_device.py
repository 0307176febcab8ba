"""The device side of OTA on CPython: the real pico_w updater (ota, otastate, boot.py) in the
simulator's interpreter, downloading from a real HTTP server into a flash with littlefs
semantics. Every refusal leaves main.py alone; a power cut at any file operation of an
update leaves a bootable device that converges on the new version."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from picofleet.credentials import FleetKeys
from picofleet.sim.firmware import (
    Interpreter,
    PowerLoss,
    VirtualBoard,
    device_config,
    flash,
    release_main,
)
from tests.firmware.artifacts import Artifacts, serve
from tests.firmware.vectors import key_id, raw_public
from tests.helpers import SECRET

NOW = 1_763_000_000


def padded(version: str, size: int = 20_000) -> bytes:
    """A release main.py big enough to take several commits while it downloads."""
    body = release_main(version)
    filler = b"# " + b"x" * 76 + b"\n"
    return body + filler * ((size - len(body)) // len(filler))


@dataclass
class Rig:
    root: Path
    signer: Ed25519PrivateKey
    srv: Artifacts
    old: bytes

    def meta(
        self,
        data: bytes,
        *,
        version: str = "1.1.0",
        action: str = "install",
        serve: bytes | None = None,
        size: int | None = None,
        signer: Ed25519PrivateKey | None = None,
        created_at: int = NOW,
    ) -> bytes:
        sha = self.srv.add(data, serve=serve)
        manifest = json.dumps(
            {
                "version": version,
                "device_type": "pico_w",
                "channel": "stable",
                "sha256": sha,
                "size": len(data) if size is None else size,
                "artifact_url": self.srv.url(sha),
                "created_at": created_at,
                "rollout": "7",
                "action": action,
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        key = signer or self.signer
        sig = base64.b64encode(key.sign(manifest.encode())).decode()
        kid = key_id(raw_public(key))
        return json.dumps({"manifest": manifest, "sig": sig, "key_id": kid}).encode()

    def board(self, name: str = "dev") -> VirtualBoard:
        """A fresh copy of the flashed device."""
        target = self.root.parent / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(self.root, target)
        return VirtualBoard("OTA-1", target)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    signer = Ed25519PrivateKey.generate()
    with serve() as srv:
        root = tmp_path / "template"
        cfg = device_config(
            "OTA-1",
            keys=FleetKeys(SECRET.encode()),
            mqtt_host="127.0.0.1",
            mqtt_port=1,
            http_base=None,
            ota_pubkey=raw_public(signer),
        )
        flash(root, cfg)
        old = release_main("1.0.0")
        (root / "main.py").write_bytes(old)
        yield Rig(root, signer, srv, old)


def boot(board: VirtualBoard, *, cut: int | None = None) -> Interpreter:
    """Power on and run boot.py, as the board does before main.py; with ``cut`` the power
    fails again at that file operation."""
    board.power_on()
    if cut is not None:
        board.fs.cut_at = board.fs.ops + cut
    board.associate()
    interp = Interpreter(board)
    interp.run_main("boot.py")
    return interp


def running_version(board: VirtualBoard) -> str:
    data = board.fs.read_bytes("main.py") or b""
    m = re.search(rb'^VERSION = "([^"]*)"', data, re.M)
    assert m is not None
    return m.group(1).decode()


def updater(interp: Interpreter) -> Any:
    config = interp.load("config")
    cfg = config.load()
    store = interp.load("otastate").Store()
    version = running_version(interp.board)
    return interp.load("ota").Updater(cfg, version, store, config.public_key(cfg), lambda: NOW)


def install(interp: Interpreter, meta: bytes, *, now: int = 0, source: str = "channel") -> Any:
    """Offer a meta to a fresh updater; None when it decides not to install."""
    upd = updater(interp)
    upd.offer(source, meta)
    m = upd.next(now)
    if m is None:
        return None
    return interp.load("asyncio").run(upd.install(m, None))


def state(board: VirtualBoard) -> dict[str, Any]:
    """ota.json as the device reads it: a temp file left by a cut before its rename wins."""
    for name in ("ota.json.tmp", "ota.json"):
        data = board.fs.read_bytes(name)
        if data:
            return dict(json.loads(data))
    return {"pending": None, "outbox": [], "bad": [], "pin": None}


def outbox(board: VirtualBoard) -> list[dict[str, Any]]:
    return list(state(board)["outbox"])


def states(board: VirtualBoard) -> list[str]:
    return [r["state"] for r in outbox(board)]


def test_update_applies_boots_and_confirms(rig: Rig) -> None:
    new = padded("1.1.0")
    board = rig.board()
    interp = boot(board)
    assert install(interp, rig.meta(new)) is True
    assert board.fs.read_bytes("main.py") == new
    assert board.fs.read_bytes("main.py.bak") == rig.old
    assert not board.fs.exists("ota.part")
    assert states(board) == ["received", "downloading", "verified", "applied"]
    interp = boot(board)
    st = state(board)
    assert st["pending"]["phase"] == "trial" and st["pending"]["boots"] == 1
    assert interp.load("otastate").Store().confirm("1.1.0") is True
    reports = outbox(board)
    assert reports[-1]["state"] == "booted_ok" and reports[-1]["version"] == "1.1.0"
    assert [r["seq"] for r in reports] == [1, 2, 3, 4, 5]
    assert all(r["rollout"] == "7" for r in reports)
    # the same meta again changes nothing: 1.1.0 runs now
    assert install(boot(board), rig.meta(new)) is None


def test_broken_download_resumes_with_range(rig: Rig) -> None:
    new = padded("1.1.0", 30_000)
    meta = rig.meta(new)
    rig.srv.cut_after[hashlib.sha256(new).hexdigest()] = 20_000
    board = rig.board()
    interp = boot(board)
    assert install(interp, meta) is False
    last = outbox(board)[-1]
    assert last["state"] == "failed" and last["reason"] == "download_error"
    kept = board.fs.read_bytes("ota.part") or b""
    assert 16_384 <= len(kept) <= 20_000 and new.startswith(kept)
    assert board.fs.read_bytes("main.py") == rig.old
    assert install(boot(board), meta) is True
    assert rig.srv.ranges[-1] == f"bytes={len(kept)}-"
    assert board.fs.read_bytes("main.py") == new


def test_power_cut_mid_download_resumes_after_reboot(rig: Rig) -> None:
    new = padded("1.1.0", 40_000)
    meta = rig.meta(new)
    board = rig.board()
    interp = boot(board)
    ops = board.fs.ops
    commits = [i for i, t in enumerate(board.fs.trace) if "commit ota.part" in t]
    assert not commits
    board.fs.cut_at = ops + 12  # a few commits of ota.part in
    with pytest.raises(PowerLoss):
        install(interp, meta)
    kept = board.fs.read_bytes("ota.part") or b""
    assert kept and new.startswith(kept)
    assert board.fs.read_bytes("main.py") == rig.old
    assert install(boot(board), meta) is True
    assert rig.srv.ranges[-1] == f"bytes={len(kept)}-"
    assert board.fs.read_bytes("main.py") == new


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("tampered_artifact", "hash_mismatch"),
        ("longer_artifact", "hash_mismatch"),
        ("truncated_artifact", "download_error"),
        ("missing_artifact", "download_error"),
        ("no_space", "no_space"),
    ],
)
def test_bad_downloads_are_refused_and_nothing_is_replaced(
    rig: Rig, case: str, reason: str
) -> None:
    new = padded("1.1.0")
    if case == "tampered_artifact":
        meta = rig.meta(new, serve=new.replace(b"x", b"y", 1))
    elif case == "longer_artifact":
        meta = rig.meta(new, serve=new + b"# more\n")
    elif case == "truncated_artifact":
        meta = rig.meta(new, serve=new[:-100])
    elif case == "missing_artifact":
        meta = rig.meta(new)
        rig.srv.files.clear()
    else:
        meta = rig.meta(new)
    board = rig.board()
    if case == "no_space":  # room for the state file, not for the artifact and a backup
        board.fs.capacity = board.fs.used() + 24 * 1024
    interp = boot(board)
    assert install(interp, meta) is False
    last = outbox(board)[-1]
    assert (last["state"], last["reason"], last["version"]) == ("failed", reason, "1.1.0")
    assert board.fs.read_bytes("main.py") == rig.old
    assert state(board)["pending"] is None
    if reason == "hash_mismatch":
        assert not board.fs.exists("ota.part")
        assert install(boot(board), meta) is False  # an artifact that lies is not retried
        assert rig.srv.ranges.count(None) == 2


@pytest.mark.parametrize(
    ("case", "reason"),
    [("wrong_key", "key_unknown"), ("tampered_meta", "sig_invalid"), ("forged", "sig_invalid")],
)
def test_bad_meta_is_refused_before_any_download(rig: Rig, case: str, reason: str) -> None:
    new = padded("1.1.0")
    if case == "wrong_key":
        meta = rig.meta(new, signer=Ed25519PrivateKey.generate())
    elif case == "tampered_meta":
        doc = json.loads(rig.meta(new))
        doc["manifest"] = doc["manifest"].replace('"size":', '"size":1')
        meta = json.dumps(doc).encode()
    else:  # signed by another key, claiming the fleet key's id
        doc = json.loads(rig.meta(new, signer=Ed25519PrivateKey.generate()))
        doc["key_id"] = key_id(raw_public(rig.signer))
        meta = json.dumps(doc).encode()
    board = rig.board()
    assert install(boot(board), meta) is None
    reports = outbox(board)
    assert [(r["state"], r["reason"], r["version"]) for r in reports] == [("failed", reason, None)]
    assert rig.srv.ranges == [] and board.fs.read_bytes("main.py") == rig.old


def test_rollback_and_pin_install_older_versions(rig: Rig) -> None:
    board = rig.board()
    (board.fs.root / "main.py").write_bytes(release_main("1.2.0"))
    older = padded("1.1.0")
    assert install(boot(board), rig.meta(older)) is None  # not newer: ignored
    assert install(boot(board), rig.meta(older, action="rollback")) is True
    assert running_version(board) == "1.1.0"
    interp = boot(board)
    pinned = padded("1.0.5")
    meta = rig.meta(pinned, version="1.0.5", action="pin")
    assert install(interp, meta, source="device") is None  # on trial: nothing new until confirmed
    interp.load("otastate").Store().confirm("1.1.0")
    assert install(boot(board), meta, source="device") is True
    assert running_version(board) == "1.0.5"
    st = state(board)
    assert st["pin"] == "1.0.5"
    newer = padded("1.3.0")
    interp = boot(board)
    interp.load("otastate").Store().confirm("1.0.5")
    assert install(interp, rig.meta(newer, version="1.3.0")) is None  # pinned: channel ignored
    unpin = install(boot(board), b"", source="device")  # an empty per-device meta unpins
    assert unpin is None and state(board)["pin"] is None
    assert install(boot(board), rig.meta(newer, version="1.3.0")) is True


def test_a_replayed_older_downgrade_is_refused(rig: Rig) -> None:
    """Signed metas do not expire; a pin or rollback older than one accepted is a replay."""
    board = rig.board()
    (board.fs.root / "main.py").write_bytes(release_main("1.2.0"))
    captured = rig.meta(padded("1.0.5"), version="1.0.5", action="pin", created_at=NOW - 600)
    pin = rig.meta(padded("1.1.0"), action="pin")
    assert install(boot(board), pin, source="device") is True
    interp = boot(board)
    interp.load("otastate").Store().confirm("1.1.0")
    assert install(boot(board), pin, source="device") is None  # retained again: no-op
    # A newer channel rollback does not make the device's own (older) pin look replayed.
    channel = rig.meta(padded("1.0.9"), version="1.0.9", action="rollback", created_at=NOW + 60)
    assert install(boot(board), channel) is None  # pinned: the channel is ignored
    assert install(boot(board), pin, source="device") is None
    assert [r["reason"] for r in outbox(board)].count("replayed") == 0
    assert install(boot(board), captured, source="device") is None
    assert running_version(board) == "1.1.0" and state(board)["pin"] == "1.1.0"
    last = outbox(board)[-1]
    assert (last["state"], last["reason"]) == ("failed", "replayed")


def test_power_loss_at_every_step_leaves_a_bootable_device(rig: Rig) -> None:
    new = padded("1.1.0")
    meta = rig.meta(new)
    clean = rig.board("clean")
    interp = boot(clean)
    first = clean.fs.ops
    assert install(interp, meta) is True
    steps = clean.fs.trace[first:]
    assert len(steps) >= 20, steps
    for k in range(1, len(steps) + 1):
        board = rig.board("cut")
        interp = boot(board)
        board.fs.cut_at = board.fs.ops + k
        with pytest.raises(PowerLoss):
            install(interp, meta)
        # power returns: boot.py runs, main.py must be one whole version or the other
        interp = boot(board)
        main = board.fs.read_bytes("main.py")
        assert main in (rig.old, new), f"cut before {steps[k - 1]!r}: main.py is neither"
        pending = state(board)["pending"]
        if main == new:
            assert pending is not None and pending["phase"] == "trial", steps[k - 1]
        else:
            assert pending is None, steps[k - 1]
        # the retained meta comes again until the device runs and confirms 1.1.0
        for attempt in range(3):
            if board.fs.read_bytes("main.py") == new:
                break
            if install(interp, meta, now=attempt * 60_000):
                interp = boot(board)
        assert board.fs.read_bytes("main.py") == new, steps[k - 1]
        assert board.fs.read_bytes("main.py.bak") == rig.old
        assert interp.load("otastate").Store().confirm("1.1.0") is True
        reports = outbox(board)
        assert reports[-1]["state"] == "booted_ok", (steps[k - 1], reports)
        seqs = [r["seq"] for r in reports]
        assert seqs == sorted(set(seqs)), seqs
        assert not board.fs.exists("ota.part")


def test_power_loss_during_rollback_still_restores_once(rig: Rig) -> None:
    new = release_main("1.1.0", crash=True)
    meta = rig.meta(new)
    template = rig.board("applied")
    assert install(boot(template), meta) is True
    for _ in range(3):  # three unconfirmed boots
        boot(template)
    clean = rig.board("clean")
    clean.fs.root.joinpath("..", "applied")
    shutil.rmtree(clean.fs.root)
    shutil.copytree(template.fs.root, clean.fs.root)
    first = clean.fs.ops
    boot(clean)  # the fourth: rollback
    steps = clean.fs.trace[first:]
    assert clean.fs.read_bytes("main.py") == rig.old
    assert states(clean)[-1] == "rolled_back"
    for k in range(1, len(steps) + 1):
        board = rig.board("cut")
        shutil.rmtree(board.fs.root)
        shutil.copytree(template.fs.root, board.fs.root)
        with pytest.raises(PowerLoss):
            boot(board, cut=k)
        boot(board)
        assert board.fs.read_bytes("main.py") == rig.old, steps[k - 1]
        assert states(board).count("rolled_back") == 1, steps[k - 1]
        st = state(board)
        assert st["pending"] is None and hashlib.sha256(new).hexdigest() in st["bad"]
        assert install(boot(board), meta) is None  # never again
