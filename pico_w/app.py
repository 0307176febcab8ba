# The pump controller: one task per concern, all on the board (hw), the pump's rules (pump),
# the sample ring (ring + envelope), the MQTT session (mqtt) and the updater (ota).
#   control  every 0.2 s: pump timers -> relay, feed the watchdog
#   sampler  every telemetry_interval_s: sensors -> automatic watering rule -> ring
#   net      Wi-Fi, clock, MQTT (over TLS when config.json holds the hub's CA: ca_pem) with
#            capped backoff; while online: commands and their acks,
#            OTA reports, the ring drained oldest first, OTA metas, keepalive
# The watchdog (8 s) is fed by the control task only while the sampler and the net task
# have shown progress within _STALL_MS (each beats at least every _BEAT_S), so a task that
# hangs on an await stops the feeding and the board resets. While the net task blocks the
# loop (sockets, the signature check) it feeds between steps, each step bounded below 8 s
# (socket calls by their timeout, DNS by hw.Board.resolve), and only if the last turn of
# the control task found all healthy and came less than _BLOCK_MS ago. A trial main.py
# confirms itself (and cancels boot.py's deadline) with its first good publish.
# Any unexpected error switches the relay off and resets the board; a missing or bad
# config.json leaves it idle with the relay off and the reason printed on the REPL.
import asyncio
import gc
import json
import random

import config
import envelope
import mqtt
import ota
import otastate
import provision
import pump
import ring
import seqstore
import soil

_CONTROL_S = 0.2
_POLL_S = 0.1
_SLOTS = 128  # samples kept while offline (2 h at the default 60 s)
_CMDS_MAX = 4
_BURST = 8  # envelopes per poll while draining the ring
_KEEPALIVE_S = 30
_SOCK_TIMEOUT_S = 3  # two of these fit in the 8 s watchdog
_STALL_MS = 30000  # a task silent this long is stuck: the watchdog goes unfed
_BLOCK_MS = 120000  # the longest the net task may hold the loop (a signature check on rp2)
_BEAT_S = 5  # the longest a task sleeps in one go
_BACKOFF_MIN_S = 0.5
_BACKOFF_MAX_S = 30
_WIFI_WAIT_S = 15
_RESYNC_MS = 6 * 3600 * 1000
_SYNC_RETRY_MS = 60000
_HTTP_DRIFT_S = 2  # what a clock set from the hub's Date header may be off by
_SEQ_FILE = "seq.dat"
_CONTROL, _SAMPLER, _NET = 0, 1, 2
_NAN = float("nan")


def _say(*args):
    print("picofleet:", *args)


def _nan(v):
    return _NAN if v is None else v


async def main(version):
    import hw

    try:
        cfg = config.load()
    except config.ConfigError as e:
        await _idle(hw.Board(), str(e))
        return
    board = hw.Board(cfg["pins"])
    try:
        await App(cfg, board, version).run()
    except Exception as e:
        board.relay(False)
        _say("fatal error, resetting:", repr(e))
        await asyncio.sleep(2)
        board.reset()


async def _idle(board, why):
    board.relay(False)
    n = 0
    while True:
        if n % 12 == 0:
            _say(why)
            _say("relay off; idle until config.json is fixed and the board is reset")
        n += 1
        # boot.py may have armed the watchdog (a trial, a failing updater): waiting for a
        # config over USB is no hang; a trial still ends by its deadline
        board.feed()
        await asyncio.sleep(_BEAT_S)


class App:
    def __init__(self, cfg, board, version):
        self.cfg = cfg
        self.board = board
        self.version = version
        base = "%s/devices/%s/" % (cfg["prefix"], cfg["device_key"])
        self.t_telemetry = base + "telemetry"
        self.t_startup = base + "startup"
        self.t_status = base + "status"
        self.t_ota_status = base + "ota/status"
        self.t_cmd = base + "cmd"
        self.t_ota = base + "ota"
        self.t_channel = "%s/ota/%s/%s" % (cfg["prefix"], cfg["device_type"], cfg["channel"])
        self.pump = pump.Pump(cfg["pump"])
        self.ring = ring.Ring(_SLOTS, envelope.SIZE)
        self.seq = seqstore.SeqStore(_SEQ_FILE)
        self.store = otastate.Store()
        self.ota = None
        if cfg["ota_pubkey"]:
            key = config.public_key(cfg)
            self.ota = ota.Updater(cfg, version, self.store, key, self.epoch, board.resolve)
        self.cmds = []
        self.cmds_dropped = 0
        self.sess = None
        self._tls = None  # the SSLContext for the hub's CA, made at the first TLS connect
        self.boot_epoch = None  # Unix time at ms 0 of this boot, once a clock answered
        self.drift_s = 0
        self._synced_at = None
        self._sync_tried = None
        self.startup_sent = False
        self.confirmed = False
        self._reboot = False
        now = board.ms()
        self._beats = [now, now, now]  # control, sampler, net: last progress (ms)
        self._healthy = True  # what the last turn of the control task found

    # -- watchdog ------------------------------------------------------------------------
    def _beat(self, task):
        self._beats[task] = self.board.ms()

    def _watch(self, now):
        # The control task's turn: feed when the other tasks made progress lately.
        self._beats[_CONTROL] = now
        b = self._beats
        self._healthy = now - b[_SAMPLER] < _STALL_MS and now - b[_NET] < _STALL_MS
        if self._healthy:
            self.board.feed()

    def _progress(self):
        # The net task made progress (a packet, a chunk, a verify step) while it holds the
        # loop: feed if all was well when the loop last turned, and that was not too long ago.
        now = self.board.ms()
        self._beats[_NET] = now
        if self._healthy and now - self._beats[_CONTROL] < _BLOCK_MS:
            self.board.feed()

    # -- time ----------------------------------------------------------------------------
    def epoch(self):
        if self.boot_epoch is None:
            return None
        return self.boot_epoch + self.board.ms() // 1000

    def _sync_clock(self):
        b = self.board
        now = b.ms()
        if self._synced_at is not None and now - self._synced_at < _RESYNC_MS:
            return
        if self._sync_tried is not None and now - self._sync_tried < _SYNC_RETRY_MS:
            return
        self._sync_tried = now
        self._progress()
        drift = None
        if b.ntp(self.cfg["ntp_host"] or self.cfg["broker"]["host"]):
            drift = 0
        elif self.cfg["hub_http"]:
            import httpc

            self._progress()
            t = httpc.server_time(
                self.cfg["hub_http"] + "/health", feed=self._progress, resolve=b.resolve
            )
            if t is not None:
                b.set_time(t)
                drift = _HTTP_DRIFT_S
        if drift is None:
            return
        now = b.ms()
        epoch0 = b.epoch() - now // 1000
        # Keep sample times steady: move the origin only when the clock really moved.
        if self.boot_epoch is None or abs(epoch0 - self.boot_epoch) > 2:
            self.boot_epoch = epoch0
        self.drift_s = drift
        self._synced_at = now

    # -- tasks ---------------------------------------------------------------------------
    async def run(self):
        self.board.watchdog()
        self.board.relay(False)
        await asyncio.gather(self._control(), self._sampler(), self._net())

    def _relay(self, now):
        self.board.relay(self.pump.on, self.pump.remaining_ms(now))

    async def _control(self):
        b = self.board
        while True:
            now = b.ms()
            self.pump.tick(now)
            self._relay(now)
            self._watch(now)
            await asyncio.sleep(_CONTROL_S)

    async def _sampler(self):
        b = self.board
        due = b.ms()
        while True:
            now = b.ms()
            if now >= due:
                self._sample()
                due = now + self.cfg["telemetry_interval_s"] * 1000
            self._beat(_SAMPLER)
            await asyncio.sleep(min(_BEAT_S, (due - now) / 1000))

    def _sample(self):
        b = self.board
        now = b.ms()
        cal = self.cfg["calibration"]
        pct = soil.percent(b.moisture_raw(), cal["moisture_dry"], cal["moisture_wet"])
        self.pump.moisture(pct, now)
        self._relay(now)
        run_s, starts = self.pump.take(now)
        rssi = b.rssi() if b.wifi_up() else None
        gc.collect()
        values = (
            _nan(pct),
            1 if self.pump.on else 0,
            run_s,
            starts,
            b.temperature_c(),
            b.supply_v(),
            _nan(rssi),
            gc.mem_free(),
            now // 1000,
        )
        seq = self.seq.next()
        envelope.pack_into(self.ring.buf, self.ring.push(), seq, now // 1000, values)

    async def _net(self):
        delay = _BACKOFF_MIN_S
        while True:
            try:
                await self._wifi()
                self._sync_clock()
                self._connect()
                delay = _BACKOFF_MIN_S
                await self._online()
            except (OSError, mqtt.MqttError) as e:
                _say("network:", repr(e))
            self._disconnect()
            # capped exponential backoff with jitter, so a fleet does not reconnect in step
            await self._sleep(delay * (0.5 + random.getrandbits(8) / 512))
            delay = min(delay * 2, _BACKOFF_MAX_S)

    async def _sleep(self, s):
        # the net task's long sleeps, in slices that keep its beat
        while s > 0:
            self._beat(_NET)
            await asyncio.sleep(min(s, _BEAT_S))
            s -= _BEAT_S
        self._beat(_NET)

    async def _wifi(self):
        b = self.board
        if b.wifi_up():
            return
        w = self.cfg["wifi"]
        b.wifi_connect(w["ssid"], w["password"], w.get("country"))
        for _ in range(_WIFI_WAIT_S * 5):
            self._beat(_NET)
            await asyncio.sleep(0.2)
            if b.wifi_up():
                return
            status = b.wifi_status()
            if status < 0:
                raise OSError("wifi: join failed (status %d)" % status)
        raise OSError("wifi: no address after %d s" % _WIFI_WAIT_S)

    def _connect(self):
        b = self.board
        br = self.cfg["broker"]
        self._progress()
        addr = b.resolve(br["host"], br["port"])
        if self._tls is None and self.cfg.get("ca_pem"):
            # Kept across reconnects: the CA is parsed once. The clock was set above, and
            # must be: mbedTLS checks the certificate's dates against the RTC.
            self._tls = mqtt.tls_context(config.ca_der(self.cfg))
        s = mqtt.Session(
            self.cfg,
            self.t_status,
            self._on_message,
            _KEEPALIVE_S,
            _SOCK_TIMEOUT_S,
            self._progress,
            addr,
            self._tls,
        )
        self.sess = s
        s.connect(b.ms())
        s.subscribe(self.t_cmd)
        if self.ota is not None:
            # the device's own meta first: a pin must be known before the channel's
            s.subscribe(self.t_ota)
            s.subscribe(self.t_channel)
        self._status()

    def _disconnect(self):
        if self.sess is not None:
            self.sess.close()
            self.sess = None

    async def _online(self):
        b = self.board
        while True:
            if not b.wifi_up():
                raise OSError("wifi: link lost")
            self._progress()
            self.sess.poll()
            self._startup()
            self._commands()
            self._reports()
            await self._drain()
            await self._update()
            self.sess.keepalive(b.ms())
            await asyncio.sleep(_POLL_S)

    # -- MQTT traffic --------------------------------------------------------------------
    def _publish(self, topic, payload, retain=False):
        self.sess.publish(topic, payload, self.board.ms(), retain)

    def _on_message(self, topic, msg):
        try:
            t = topic.decode() if isinstance(topic, bytes) else topic
        except UnicodeError:
            return  # not one of ours (a broker checks topics are UTF-8; this one did not)
        if t == self.t_cmd:
            if len(self.cmds) >= _CMDS_MAX:
                self.cmds.pop(0)
                self.cmds_dropped += 1
            self.cmds.append(msg)
        elif self.ota is not None and t == self.t_ota:
            self.ota.offer(ota.DEVICE, msg)
        elif self.ota is not None and t == self.t_channel:
            self.ota.offer(ota.CHANNEL, msg)

    def _status(self, ack=None):
        p = self.pump
        doc = {
            "state": "online",
            "fw": self.version,
            "pump": 1 if p.on else 0,
            "buffered": len(self.ring),
            "dropped": self.ring.dropped,
        }
        if p.fault:
            doc["fault"] = p.fault
        if ack is not None:
            doc["ack"] = ack
        self._publish(self.t_status, json.dumps(doc), retain=True)

    def _startup(self):
        if self.startup_sent or self.boot_epoch is None or not self.cfg["provision_key"]:
            return
        nonce = self.board.random_hex(8)
        body = provision.startup(self.cfg, self.version, self.epoch(), nonce, self.drift_s)
        self._publish(self.t_startup, body)
        self.startup_sent = True

    def _reports(self):
        st = self.store
        if not st.outbox:
            return
        try:
            for r in list(st.outbox):
                if r.get("ts") is None:
                    r["ts"] = self.epoch()
                self._publish(self.t_ota_status, json.dumps(r))
                st.acked(r["seq"])
        finally:
            st.save()

    async def _drain(self):
        rg = self.ring
        n = 0
        while len(rg) and n < _BURST:
            seq, up, values = envelope.unpack_from(rg.buf, rg.peek())
            ts = None if self.boot_epoch is None else self.boot_epoch + up
            self._publish(self.t_telemetry, envelope.build(seq, ts, values))
            rg.pop()
            n += 1
            if not self.confirmed:
                # the first good publish: a version on trial has proved itself
                self.confirmed = True
                self.board.trial_passed()
                self.store.confirm(self.version)
            await asyncio.sleep(0)

    async def _update(self):
        if self.ota is None:
            return
        b = self.board
        m = self.ota.next(b.ms(), self._progress)
        if m is None:
            return
        applied = await self.ota.install(m, self._progress)
        self._reports()
        if applied:
            _say("update to", m["version"], "applied, resetting")
            self.pump.stop(b.ms())
            b.reset()

    # -- commands ------------------------------------------------------------------------
    def _commands(self):
        while self.cmds:
            ack = self._command(self.cmds.pop(0))
            self._status(ack)
            if self._reboot:
                _say("reboot requested")
                self.board.reset()

    def _command(self, raw):
        try:
            c = json.loads(raw)
        except ValueError:
            c = None
        if not isinstance(c, dict):
            return _ack(None, None, "bad_json", "a command is a JSON object")
        name, cid = c.get("cmd"), c.get("id")
        if isinstance(cid, str):
            cid = _utf8(cid)
        now = self.board.ms()
        detail = ""
        try:
            if name == "pump" and c.get("on", True) is not False:
                self.pump.start(c.get("seconds"), now)
                detail = "on for %d ms" % self.pump.remaining_ms(now)
            elif name in ("pump", "stop"):
                self.pump.stop(now)
                detail = "off"
            elif name == "reboot":
                self._reboot = True
            elif name == "config":
                new = config.update(self.cfg, c.get("set"))
                config.save(new)
                self.cfg = new
                self.pump.set_limits(new["pump"], now)
            else:
                return _ack(name, cid, "unknown_cmd", "commands: pump, stop, reboot, config")
        except pump.PumpError as e:
            return _ack(name, cid, e.args[0], e.args[1])
        except config.ConfigError as e:
            return _ack(name, cid, "out_of_bounds", str(e))
        except Exception as e:  # a command from outside must never take the device down
            return _ack(name, cid, "failed", repr(e))
        finally:
            self._relay(now)
        return _ack(name, cid, None, detail)


def _utf8(s):
    # MicroPython's json.loads turns an escaped pair like \ud83c\udf31 (what CPython's
    # json.dumps writes for any character past U+FFFF) into two surrogates, which are not
    # UTF-8 once echoed back: join the pairs, replace lone ones with U+FFFD.
    b = s.encode()
    if b"\xed" not in b:
        return s
    out = bytearray()
    i, n = 0, len(b)
    while i < n:
        if b[i] == 0xED and i + 2 < n and b[i + 1] >= 0xA0:
            hi = 0xD000 | (b[i + 1] & 0x3F) << 6 | b[i + 2] & 0x3F
            if hi < 0xDC00 and i + 5 < n and b[i + 3] == 0xED and b[i + 4] >= 0xB0:
                lo = 0xD000 | (b[i + 4] & 0x3F) << 6 | b[i + 5] & 0x3F
                u = 0x10000 + ((hi - 0xD800) << 10) + lo - 0xDC00
                out.extend(bytes((0xF0 | u >> 18, 0x80 | u >> 12 & 0x3F)))
                out.extend(bytes((0x80 | u >> 6 & 0x3F, 0x80 | u & 0x3F)))
                i += 6
            else:
                out.extend(b"\xef\xbf\xbd")
                i += 3
        else:
            out.append(b[i])
            i += 1
    return out.decode()


def _ack(name, cid, error, detail):
    return {"cmd": name, "id": cid, "ok": error is None, "error": error, "detail": detail}
