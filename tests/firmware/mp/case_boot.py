# boot.py, run as the board runs it at each reset, over otastate and hw with the recording
# machine stand-in: a trial boot is guarded by the watchdog and a deadline, a trial main.py
# that runs but never publishes is rolled back, and a failing updater still guards the boot.
import json
import sys

import machine

APP_OLD = b"VERSION = '1.0.0'\n"
APP_NEW = b"VERSION = '1.1.0'\n"


def _write(name, data):
    with open(name, "wb") as f:
        f.write(data)


def _read(name):
    with open(name, "rb") as f:
        return f.read()


def _reset_board():
    # a reset: RAM is gone (modules, timers, the watchdog), the flash stays
    machine.clear()
    for name in ("hw", "otastate"):
        sys.modules.pop(name, None)


def _boot():
    _reset_board()
    with open("boot.py") as f:
        exec(f.read(), {"__name__": "boot"})


def _sha(data):
    import binascii
    import hashlib

    return binascii.hexlify(hashlib.sha256(data).digest()).decode()


def _trial_state():
    _write("main.py", APP_NEW)
    _write("main.py.bak", APP_OLD)
    pending = {
        "version": "1.1.0",
        "sha256": _sha(APP_NEW),
        "size": len(APP_NEW),
        "rollout": "7",
        "phase": "trial",
        "boots": 0,
        "prev": "1.0.0",
    }
    _write("ota.json", json.dumps({"seq": 3, "pending": pending, "outbox": []}).encode())


def _deadline():
    ts = [t for t in machine.active_timers() if t.mode == machine.Timer.ONE_SHOT]
    assert len(ts) == 1, ts
    return ts[0]


def test_a_trial_boot_arms_the_watchdog_and_a_deadline():
    _trial_state()
    _boot()
    assert machine.wdt is not None and machine.wdt.timeout <= 8388
    assert _deadline().period >= 60000


def test_a_trial_that_runs_but_never_publishes_is_rolled_back():
    _trial_state()
    boots = 0
    while _read("main.py") == APP_NEW:
        _boot()
        boots += 1
        assert boots <= 10, "never rolled back"
        if _read("main.py") != APP_NEW:
            break  # this boot rolled back
        # main.py runs, feeds the watchdog, never publishes: only a deadline can end it
        assert machine.active_timers(), "the trial main.py runs forever"
        try:
            _deadline().fire()
            raise AssertionError("the deadline did not reset the board")
        except machine.Reset:
            pass
    import otastate

    st = otastate.Store()
    assert st.pending is None and _sha(APP_NEW) in st.bad
    assert st.outbox[-1]["state"] == "rolled_back"
    assert boots == otastate.MAX_BOOTS + 1


def test_the_deadline_an_update_asked_for():
    # config.json "ota_trial_s", copied into the pending update by ota.Updater
    _trial_state()
    with open("ota.json") as f:
        st = json.loads(f.read())
    st["pending"]["trial_ms"] = 45000
    _write("ota.json", json.dumps(st).encode())
    _boot()
    assert _deadline().period == 45000


def test_a_normal_boot_arms_nothing():
    _write("main.py", APP_OLD)
    _write("ota.json", b'{"seq": 3, "pending": null, "outbox": []}')
    _boot()
    assert machine.wdt is None and not machine.active_timers()


def test_a_failing_updater_still_guards_the_boot():
    # an ota.json whose pending update lacks its hash: on_boot raises
    _write("main.py", APP_NEW)
    _write("ota.json", b'{"seq": 3, "pending": {"phase": "apply", "version": "1.1.0"}}')
    _boot()
    assert machine.wdt is not None
    _deadline()
