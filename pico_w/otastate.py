# The updater's memory (ota.json) and the boot-time half of an update, which boot.py runs.
#
#   ota.json  {"seq": last report number, "pending": update in flight or null,
#              "outbox": reports not yet acknowledged by the broker, "bad": artifacts that
#              were rolled back, "pin": version pinned by the hub, "dl": artifact in ota.part,
#              "down_at": per source, created_at of the newest pin/rollback meta seen,
#              "done": per source, "created_at:sha256" of the pin/rollback last installed}
#
# An update goes: ota.part verified -> main.py copied to main.py.bak -> pending written
# (phase "apply") -> ota.part renamed over main.py -> phase "trial". Each step is one file
# operation, so a power cut between any two leaves either the old or the new main.py
# complete, and on_boot() finishes or undoes what the state says was under way:
#   apply     ota.part still there and intact: rename it now; main.py already new: go on
#   trial     count the boot; past MAX_BOOTS without confirm(): phase "rollback"
#   rollback  main.py.bak back over main.py, forget pending, report rolled_back
# Reports carry a per-device seq that only grows (it is saved with the report), so the hub
# can tell a late or repeated report from a new one.
import json
import os

APP = "main.py"
BAK = "main.py.bak"
BAK_TMP = "main.py.bak.tmp"
PART = "ota.part"
STATE = "ota.json"
MAX_BOOTS = 3
trial_ms = None  # set by on_boot() on a trial boot: the deadline the update asked for
_OUTBOX_MAX = 10
_BAD_MAX = 4


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def sha256_file(path):
    import binascii
    import hashlib

    h = hashlib.sha256()
    buf = bytearray(512)
    mv = memoryview(buf)
    try:
        with open(path, "rb") as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                h.update(mv[:n])
    except OSError:
        return None
    return binascii.hexlify(h.digest()).decode()


def _read(path):
    try:
        with open(path) as f:
            d = json.loads(f.read())
        return d if isinstance(d, dict) else None
    except (OSError, ValueError):
        return None


class Store:
    def __init__(self):
        # A complete temp file only exists when a cut fell between its write and its rename,
        # and then it is the newer state.
        d = _read(STATE + ".tmp") or _read(STATE) or {}
        self.seq = d.get("seq", 0)
        self.pending = d.get("pending")
        self.outbox = d.get("outbox") or []
        self.bad = d.get("bad") or []
        self.pin = d.get("pin")
        self.dl = d.get("dl")
        # Per source (device, channel): created_at of the newest pin/rollback meta accepted;
        # an older one from the same source is a replay.
        self.down_at = d.get("down_at") or {}
        # Per source: the pin/rollback meta last installed. Its retained copy comes back after
        # every reset; installing it again would undo any rollout that came after it.
        self.done = d.get("done") or {}

    def save(self):
        doc = {
            "seq": self.seq,
            "pending": self.pending,
            "outbox": self.outbox,
            "bad": self.bad,
            "pin": self.pin,
            "dl": self.dl,
            "down_at": self.down_at,
            "done": self.done,
        }
        tmp = STATE + ".tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps(doc))
        os.rename(tmp, STATE)

    def report(self, state, version, rollout, reason=None, detail="", ts=None):
        # Queue a report (saved by the caller's next save()); the app publishes the outbox.
        self.seq += 1
        self.outbox.append(
            {
                "version": version,
                "state": state,
                "reason": reason,
                "detail": detail,
                "seq": self.seq,
                "rollout": rollout,
                "ts": ts,
            }
        )
        if len(self.outbox) > _OUTBOX_MAX:
            self.outbox.pop(0)

    def acked(self, seq):
        # Drop reports up to seq from the outbox; True when something was dropped.
        keep = [r for r in self.outbox if r["seq"] > seq]
        changed = len(keep) != len(self.outbox)
        self.outbox = keep
        return changed

    def mark_bad(self, sha):
        if sha not in self.bad:
            self.bad.append(sha)
            if len(self.bad) > _BAD_MAX:
                self.bad.pop(0)

    def confirm(self, running):
        # The app calls this after its first good publish: a trial version has proved itself.
        p = self.pending
        if not p or p.get("phase") != "trial":
            return False
        self.pending = None
        self.report("booted_ok", p["version"], p.get("rollout"), detail="running " + running)
        self.save()
        return True


def on_boot(store=None):
    # Run by boot.py before main.py. Returns True when this is a trial boot of a new version
    # (boot.py then arms the watchdog, so a main.py that hangs or drops to the REPL resets).
    global trial_ms
    st = store or Store()
    p = st.pending
    if not p:
        return False
    phase = p.get("phase")
    if phase == "apply":
        if sha256_file(PART) == p["sha256"]:
            os.rename(PART, APP)
        if sha256_file(APP) != p["sha256"]:
            st.pending = None
            st.report("failed", p["version"], p.get("rollout"), "download_error",
                      "update interrupted before the new main.py was in place")
            st.save()
            return False
        p["phase"] = phase = "trial"
        p["boots"] = 0
        st.report("applied", p["version"], p.get("rollout"), detail="completed at boot")
    if phase == "trial":
        p["boots"] = p.get("boots", 0) + 1
        if p["boots"] <= MAX_BOOTS:
            st.save()
            trial_ms = p.get("trial_ms")
            return True
        p["phase"] = phase = "rollback"
        st.save()
    if phase == "rollback":
        _rollback(st)
    return False


def _rollback(st):
    p = st.pending
    if sha256_file(APP) == p["sha256"]:
        if not exists(BAK):
            st.pending = None
            st.report("failed", p["version"], p.get("rollout"), "boot_loop",
                      "no main.py.bak to restore")
            st.save()
            return
        os.rename(BAK, APP)
    st.pending = None
    st.mark_bad(p["sha256"])
    st.report("rolled_back", p["version"], p.get("rollout"), "boot_loop",
              "not confirmed after %d boots; restored %s" % (MAX_BOOTS, p.get("prev")))
    st.save()
