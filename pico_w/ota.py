# The updater at run time (DESIGN section 6): verify meta -> decide -> download to ota.part
# while hashing -> check size and sha256 -> keep main.py.bak -> pending -> rename into place
# -> report -> the app resets. boot.py (otastate.on_boot) does the boot-time half.
#
# Only main.py is ever replaced. This module, otastate, httpc, ed25519, sha512 and boot.py
# are the updater and stay as USB flashing left them, so a bad app cannot break updating.
import binascii
import hashlib
import json
import os

import otastate

_CHUNK = 1024
_FLUSH_EVERY = 8192  # bytes between commits of ota.part, what a resume can count on
_MAX_SIZE = 262144
_MARGIN = 8192  # free flash kept beyond the artifact and the backup
_TRIES = 3  # attempts per artifact and boot
_RETRY_MS = 15000
_ACTIONS = ("install", "rollback", "pin")
_HEX = "0123456789abcdef"
DEVICE = "device"
CHANNEL = "channel"


class OtaError(Exception):
    # args: (reason, detail); reason is a code of the contract (sig_invalid, hash_mismatch,
    # no_space, download_error, bad_meta, key_unknown).
    pass


def parse_version(text):
    # (major, minor, patch) of "1.2.3", or None.
    if not isinstance(text, str):
        return None
    parts = text.split(".")
    if len(parts) != 3:
        return None
    out = []
    for p in parts:
        if not p or len(p) > 6 or not p.isdigit():
            return None
        out.append(int(p))
    return tuple(out)


def _bad(detail):
    raise OtaError("bad_meta", detail)


def check_manifest(m):
    if not isinstance(m, dict):
        _bad("manifest is not an object")
    if parse_version(m.get("version")) is None:
        _bad("version is not MAJOR.MINOR.PATCH")
    for k in ("device_type", "channel", "artifact_url"):
        if not isinstance(m.get(k), str) or not m[k]:
            _bad(k + " missing")
    sha = m.get("sha256")
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in _HEX for c in sha):
        _bad("sha256 must be 64 lower-case hex")
    size = m.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= _MAX_SIZE:
        _bad("size must be 1..%d" % _MAX_SIZE)
    if not m["artifact_url"].startswith("http://"):
        _bad("artifact_url must be http://")
    r = m.get("rollout")
    if r is not None and not isinstance(r, (str, int)):
        _bad("rollout must be a string")
    action = m.get("action", "install")
    if action not in _ACTIONS:
        _bad("unknown action")
    m["action"] = action
    return m


def verify_meta(raw, pubkey, key_id, feed=None):
    # The manifest of a signed meta, checked in the contract's order: the key id, then the
    # signature over the exact manifest bytes, and only then the manifest is parsed.
    try:
        doc = json.loads(raw)
    except ValueError:
        _bad("meta is not JSON")
    if not isinstance(doc, dict):
        _bad("meta is not an object")
    text, sig, kid = doc.get("manifest"), doc.get("sig"), doc.get("key_id")
    if not isinstance(text, str) or not isinstance(sig, str) or not isinstance(kid, str):
        _bad("meta needs manifest, sig and key_id strings")
    if pubkey is None or kid != key_id:
        raise OtaError("key_unknown", "signed with key " + kid[:16])
    try:
        sig = binascii.a2b_base64(sig.encode())
    except Exception:  # ValueError in C builds, plain Exception in the Python binascii
        sig = b""
    if len(sig) != 64:
        _bad("sig is not a base64 Ed25519 signature")
    import ed25519

    if not ed25519.verify(pubkey, text.encode(), sig, feed):
        raise OtaError("sig_invalid", "signature does not verify")
    try:
        m = json.loads(text)
    except ValueError:
        _bad("manifest is not JSON")
    return check_manifest(m)


def wanted(m, source, current, store, device_type, channel):
    # Whether a verified manifest should be installed over version `current`.
    if m["device_type"] != device_type:
        return False
    action = m["action"]
    if action in ("pin", "rollback"):
        if action == "pin" and source != DEVICE:
            return False
        if source == CHANNEL and store.pin:
            return False
        return m["version"] != current
    if source == CHANNEL and (store.pin or m["channel"] != channel):
        return False
    cur = parse_version(current) or (0, 0, 0)
    return parse_version(m["version"]) > cur and m["sha256"] not in store.bad


class Updater:
    def __init__(self, cfg, version, store, pubkey, epoch, resolve=None):
        self.version = version
        self.store = store
        self._pub = pubkey
        self._kid = cfg["ota_key_id"]
        self._type = cfg["device_type"]
        self._chan = cfg["channel"]
        self._epoch = epoch  # callable: Unix time, or None while the clock is unset
        self._resolve = resolve  # callable (host, port) -> address; hw.Board.resolve
        self._trial_s = cfg.get("ota_trial_s")  # None: boot.py's default deadline
        self._offers = {}  # source -> newest raw meta not looked at yet
        self._seen = {}  # source -> digest of the last meta looked at
        self._manifests = {}  # source -> verified manifest
        self._tries = {}  # artifact sha256 -> failed attempts this boot
        self._retry_at = 0
        self._now = 0

    def offer(self, source, raw):
        self._offers[source] = raw

    def _report(self, state, m, reason=None, detail=""):
        v = m["version"] if m else None
        r = m.get("rollout") if m else None
        self.store.report(state, v, None if r is None else str(r), reason, detail, self._epoch())
        self.store.save()

    def _look(self, source, raw, feed):
        digest = hashlib.sha256(raw).digest()
        if self._seen.get(source) == digest:
            return
        self._seen[source] = digest
        self._manifests.pop(source, None)
        if not raw:
            if source == DEVICE and self.store.pin:
                self.store.pin = None  # an empty per-device meta unpins
                self.store.save()
            return
        try:
            m = verify_meta(raw, self._pub, self._kid, feed)
        except OtaError as e:
            self._report("failed", None, e.args[0], e.args[1])
            return
        if m["action"] in ("pin", "rollback"):
            # A signed downgrade never expires: refuse one older than the newest accepted,
            # so a captured meta cannot be replayed to move the device back.
            at = m.get("created_at")
            at = at if isinstance(at, int) and not isinstance(at, bool) else 0
            last = self.store.down_at.get(source, 0)
            if at < last:
                self._report("failed", m, "replayed", "older than the last pin/rollback")
                return
            if at > last:
                self.store.down_at[source] = at
                self.store.save()
        if source == DEVICE:
            pin = m["version"] if m["action"] == "pin" else None
            if pin != self.store.pin:
                self.store.pin = pin
                self.store.save()
        if m["action"] != "install" and self.store.done.get(source) == _ident(m):
            return  # installed once already; this is its retained copy again
        m["source"] = source
        self._manifests[source] = m

    def next(self, now, feed=None):
        # A manifest to install now, or None. `now` is the app's monotonic ms.
        self._now = now
        for source in (DEVICE, CHANNEL):
            raw = self._offers.pop(source, None)
            if raw is not None:
                self._look(source, raw, feed)
        if self.store.pending or now < self._retry_at:
            return None
        for source in (DEVICE, CHANNEL):
            m = self._manifests.get(source)
            if m is None or self._tries.get(m["sha256"], 0) >= _TRIES:
                continue
            if wanted(m, source, self.version, self.store, self._type, self._chan):
                return m
        return None

    async def install(self, m, feed):
        # Download, check and put m in place. True: applied, the caller resets now.
        self._report("received", m, detail=m["action"])
        try:
            self._check_space(m)
            await self._download(m, feed)
            self._backup()
        except OtaError as e:
            reason, detail = e.args
            if reason == "hash_mismatch":  # what was downloaded is worthless: start afresh
                otastate.remove(otastate.PART)
                self.store.dl = None
            n = self._tries.get(m["sha256"], 0) + 1
            n = _TRIES if reason == "hash_mismatch" else n
            self._tries[m["sha256"]] = n
            self._retry_at = self._now + _RETRY_MS * n
            if reason == "download_error" and n < _TRIES:
                # A cut or slow link is not a verdict on the release: still downloading (the
                # next try resumes with Range), so one Wi-Fi hiccup cannot halt a rollout.
                self._report("downloading", m, reason, "retry %d of %d: %s" % (n, _TRIES, detail))
            else:
                self._report("failed", m, reason, detail)
            return False
        self._apply(m)
        return True

    def _check_space(self, m):
        try:
            s = os.statvfs("/")
        except (OSError, AttributeError):
            return
        free = s[1] * s[4]
        have = max(0, otastate.size(otastate.PART)) if self._resumable(m) else 0
        need = m["size"] - have + max(0, otastate.size(otastate.APP)) + _MARGIN
        if free < need:
            raise OtaError("no_space", "need %d bytes, %d free" % (need, free))

    def _resumable(self, m):
        dl = self.store.dl
        return dl is not None and dl.get("sha256") == m["sha256"]

    async def _download(self, m, feed):
        import asyncio

        import httpc

        st = self.store
        sha, size = m["sha256"], m["size"]
        start = otastate.size(otastate.PART) if self._resumable(m) else -1
        if start < 0 or start > size:
            otastate.remove(otastate.PART)
            st.dl = {"sha256": sha, "version": m["version"]}
            start = 0
        h = hashlib.sha256()
        if start:
            _hash_into(h, otastate.PART, start)
        self._report("downloading", m, detail="resume at %d" % start if start else "")
        got = start
        if start < size:
            try:
                r = httpc.get(m["artifact_url"], start=start, feed=feed, resolve=self._resolve)
            except (OSError, httpc.HttpError) as e:
                raise OtaError("download_error", "connect: %r" % (e,))
            try:
                if start and r.status == 200:  # the server ignored Range: start over
                    h = hashlib.sha256()
                    start = got = 0
                elif r.status != (206 if start else 200):
                    raise OtaError("download_error", "HTTP %d" % r.status)
                got = await self._receive(r, h, got, size, "ab" if start else "wb", feed, asyncio)
            finally:
                r.close()
        if got < size:
            raise OtaError("download_error", "connection closed at %d of %d bytes" % (got, size))
        if binascii.hexlify(h.digest()).decode() != sha:
            raise OtaError("hash_mismatch", "sha256 of the download differs from the manifest")

    async def _receive(self, r, h, got, size, mode, feed, asyncio):
        buf = bytearray(_CHUNK)
        mv = memoryview(buf)
        since = 0
        try:
            with open(otastate.PART, mode) as f:
                while True:
                    if feed:
                        feed()
                    n = r.readinto(mv)
                    if not n:
                        break
                    if got + n > size:
                        raise OtaError("hash_mismatch", "download longer than the manifest says")
                    f.write(mv[:n])
                    h.update(mv[:n])
                    got += n
                    since += n
                    if since >= _FLUSH_EVERY:
                        f.flush()  # commit on littlefs: a reset resumes from here
                        since = 0
                    await asyncio.sleep(0)
        except OSError as e:
            if e.args and e.args[0] == 28:
                raise OtaError("no_space", "flash full at %d bytes" % got)
            raise OtaError("download_error", "at %d of %d bytes: %r" % (got, size, e))
        return got

    def _backup(self):
        # Keep the running app as main.py.bak (copy, then rename: never half a backup).
        otastate.remove(otastate.BAK_TMP)
        if not otastate.exists(otastate.APP):
            return
        try:
            _copy(otastate.APP, otastate.BAK_TMP)
            os.rename(otastate.BAK_TMP, otastate.BAK)
        except OSError as e:
            otastate.remove(otastate.BAK_TMP)
            raise OtaError("no_space", "backup of main.py failed: %r" % (e,))

    def _apply(self, m):
        # From here on a reset finishes the job (otastate.on_boot), so errors just propagate.
        st = self.store
        r = m.get("rollout")
        st.pending = {
            "version": m["version"],
            "sha256": m["sha256"],
            "size": m["size"],
            "rollout": None if r is None else str(r),
            "phase": "apply",
            "boots": 0,
            "prev": self.version,
        }
        if self._trial_s:
            st.pending["trial_ms"] = int(self._trial_s * 1000)
        st.dl = None
        if m["action"] != "install":
            st.done[m.get("source", DEVICE)] = _ident(m)
        self._report("verified", m)
        os.rename(otastate.PART, otastate.APP)
        st.pending["phase"] = "trial"
        self._report("applied", m, detail="restarting")


def _ident(m):
    # What tells one pin/rollback meta from another: when it was made, and what it installs.
    return "%s:%s" % (m.get("created_at"), m["sha256"])


def _hash_into(h, path, n):
    buf = bytearray(_CHUNK)
    mv = memoryview(buf)
    with open(path, "rb") as f:
        while n > 0:
            k = f.readinto(mv[: min(n, _CHUNK)])
            if not k:
                break
            h.update(mv[:k])
            n -= k


def _copy(src, dst):
    buf = bytearray(_CHUNK)
    mv = memoryview(buf)
    with open(src, "rb") as a, open(dst, "wb") as b:
        while True:
            n = a.readinto(buf)
            if not n:
                break
            b.write(mv[:n])
