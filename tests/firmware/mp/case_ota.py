# ota + otastate: meta verification in the contract's order, the install decision, and the
# boot-time half of an update (finish an interrupted apply, count trial boots, roll back).
import binascii
import json
import os

import ota
import otastate

with open("vectors.json") as _f:
    V = json.loads(_f.read())["ota"]

PUB = binascii.a2b_base64(V["pubkey"].encode())
KID = V["key_id"]


def _reason(raw, pub=PUB, kid=KID):
    try:
        ota.verify_meta(raw, pub, kid)
    except ota.OtaError as e:
        return e.args[0]
    return None


class _Store:
    def __init__(self, pin=None, bad=()):
        self.pin = pin
        self.bad = list(bad)


def test_parse_version():
    assert ota.parse_version("1.10.0") == (1, 10, 0)
    for bad in ("1.0", "1.0.0.0", "v1.0.0", "1.a.0", "", None, 1, "1..0"):
        assert ota.parse_version(bad) is None, bad


def test_valid_meta_gives_its_manifest():
    m = ota.verify_meta(V["metas"]["good"].encode(), PUB, KID)
    assert m["version"] == "1.1.0" and m["action"] == "install"


def test_refusals_carry_the_contract_reason():
    metas = V["metas"]
    assert _reason(metas["tampered"].encode()) == "sig_invalid"
    assert _reason(metas["other_signer"].encode()) == "sig_invalid"
    assert _reason(metas["wrong_key_id"].encode()) == "key_unknown"
    assert _reason(metas["good"].encode(), pub=None) == "key_unknown"
    assert _reason(metas["bad_sig_b64"].encode()) == "bad_meta"
    assert _reason(metas["bad_manifest"].encode()) == "bad_meta"
    assert _reason(b"{nope") == "bad_meta"
    assert _reason(b"[1]") == "bad_meta"


def test_install_decisions():
    m = ota.verify_meta(V["metas"]["good"].encode(), PUB, KID)

    def want(m, source="channel", current="1.0.0", store=None, dtype="pico_w", chan="stable"):
        return ota.wanted(m, source, current, store or _Store(), dtype, chan)

    assert want(m)
    assert want(m, source="device")
    assert not want(m, current="1.1.0")
    assert not want(m, current="1.2.0")
    assert not want(m, dtype="pico_usb")
    assert not want(m, chan="canary")
    assert not want(m, store=_Store(pin="1.0.0"))  # pinned: channel meta is ignored
    assert want(m, source="device", store=_Store(pin="1.0.0"))
    assert not want(m, store=_Store(bad=[m["sha256"]]))  # rolled back before
    rb = dict(m)
    rb["action"] = "rollback"
    rb["version"] = "0.9.0"
    assert want(rb, current="1.0.0")
    assert want(rb, source="device", current="1.0.0", store=_Store(bad=[m["sha256"]]))
    assert not want(rb, current="0.9.0")
    pin = dict(m)
    pin["action"] = "pin"
    pin["version"] = "0.9.0"
    assert want(pin, source="device")
    assert not want(pin, source="channel")


def _write(name, data):
    with open(name, "wb") as f:
        f.write(data)


def _read(name):
    with open(name, "rb") as f:
        return f.read()


def _sha(data):
    import hashlib

    return binascii.hexlify(hashlib.sha256(data).digest()).decode()


def _pending(new, phase):
    st = otastate.Store()
    st.pending = {
        "version": "1.1.0",
        "sha256": _sha(new),
        "size": len(new),
        "rollout": "7",
        "phase": phase,
        "boots": 0,
        "prev": "1.0.0",
    }
    st.save()


def _clean():
    for name in ("main.py", "main.py.bak", "ota.part", "ota.json", "ota.json.tmp"):
        otastate.remove(name)


def test_boot_finishes_an_interrupted_apply_then_rolls_back_after_max_boots():
    _clean()
    old, new = b"VERSION = '1.0.0'\n", b"VERSION = '1.1.0'\n"
    _write("main.py", old)
    _write("main.py.bak", old)
    _write("ota.part", new)
    _pending(new, "apply")
    assert otastate.on_boot() is True
    assert _read("main.py") == new and not otastate.exists("ota.part")
    st = otastate.Store()
    assert st.pending["phase"] == "trial" and st.pending["boots"] == 1
    assert [r["state"] for r in st.outbox] == ["applied"]
    for _ in range(otastate.MAX_BOOTS - 1):
        assert otastate.on_boot() is True
    assert otastate.on_boot() is False  # one boot too many: back to the old app
    st = otastate.Store()
    assert _read("main.py") == old and st.pending is None
    assert st.outbox[-1]["state"] == "rolled_back" and st.outbox[-1]["reason"] == "boot_loop"
    assert _sha(new) in st.bad
    seqs = [r["seq"] for r in st.outbox]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_confirm_ends_the_trial():
    _clean()
    new = b"VERSION = '1.1.0'\n"
    _write("main.py", new)
    _pending(new, "trial")
    assert otastate.on_boot() is True
    st = otastate.Store()
    assert st.confirm("1.1.0") is True
    assert st.confirm("1.1.0") is False
    st = otastate.Store()
    assert st.pending is None and st.outbox[-1]["state"] == "booted_ok"
    assert otastate.on_boot() is False


def test_outbox_acks_and_seq_survive_a_reload():
    _clean()
    st = otastate.Store()
    st.report("received", "1.1.0", "7")
    st.report("downloading", "1.1.0", "7")
    st.save()
    st = otastate.Store()
    assert st.seq == 2 and len(st.outbox) == 2
    assert st.acked(1) and [r["seq"] for r in st.outbox] == [2]
    st.save()
    st = otastate.Store()
    st.report("failed", "1.1.0", "7", "hash_mismatch")
    assert st.outbox[-1]["seq"] == 3


def test_nothing_pending_is_a_normal_boot():
    _clean()
    assert otastate.on_boot() is False
    assert not otastate.exists("ota.json") or otastate.Store().pending is None
    os.listdir("/")


# -- a rollback is installed once (issue 19, finding 3) -----------------------------------
CFG = {"ota_key_id": KID, "device_type": "pico_w", "channel": "stable"}


def _updater(version):
    return ota.Updater(CFG, version, otastate.Store(), PUB, lambda: 1763000700)


def _offer(up, source, name):
    up.offer(source, V["metas"][name].encode())
    return up.next(0)


def _install_without_download(up, m):
    # what install() does once the artifact is verified: ota.part -> main.py, pending
    _write("ota.part", b"VERSION = '%s'\n" % m["version"].encode())
    up._apply(m)
    assert otastate.on_boot() is True  # the reset into the trial
    st = otastate.Store()
    st.confirm(m["version"])


def test_a_rollback_is_not_installed_again_after_the_next_rollout():
    _clean()
    _write("main.py", b"VERSION = '1.1.0'\n")
    up = _updater("1.1.0")
    m = _offer(up, ota.DEVICE, "rollback")
    assert m is not None and m["action"] == "rollback" and m["version"] == "1.0.0"
    _install_without_download(up, m)
    # now on 1.0.0, the retained per-device rollback meta is still there after the reset,
    # and a new rollout (1.2.0) comes on the channel: it is taken
    up = _updater("1.0.0")
    assert _offer(up, ota.DEVICE, "rollback") is None
    m = _offer(up, ota.CHANNEL, "rollout_after")
    assert m is not None and m["version"] == "1.2.0"
    _install_without_download(up, m)
    # the reset into 1.2.0: the same rollback meta is retained still; taking it again would
    # loop (1.2.0 -> 1.0.0 -> 1.2.0 ...)
    up = _updater("1.2.0")
    up.offer(ota.CHANNEL, V["metas"]["rollout_after"].encode())
    assert _offer(up, ota.DEVICE, "rollback") is None
    failed = [r for r in otastate.Store().outbox if r["state"] == "failed"]
    assert failed == []  # seen again is not an attack: nothing reported


def test_an_older_rollback_is_refused_and_a_newer_one_taken():
    _clean()
    _write("main.py", b"VERSION = '1.1.0'\n")
    up = _updater("1.1.0")
    _install_without_download(up, _offer(up, ota.DEVICE, "rollback"))
    up = _updater("1.2.0")
    assert _offer(up, ota.DEVICE, "rollback_older") is None
    assert otastate.Store().outbox[-1]["reason"] == "replayed"
    m = _offer(up, ota.DEVICE, "rollback_newer")
    assert m is not None and m["created_at"] == 1_763_000_900


def test_the_trial_deadline_travels_with_the_update():
    _clean()
    _write("main.py", b"VERSION = '1.1.0'\n")
    cfg = dict(CFG)
    cfg["ota_trial_s"] = 45
    up = ota.Updater(cfg, "1.1.0", otastate.Store(), PUB, lambda: 1763000700)
    m = _offer(up, ota.DEVICE, "rollback")
    _write("ota.part", b"VERSION = '1.0.0'\n")
    up._apply(m)
    assert otastate.Store().pending["trial_ms"] == 45000
    assert otastate.on_boot() is True and otastate.trial_ms == 45000
