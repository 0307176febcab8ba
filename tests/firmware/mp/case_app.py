# app: the watchdog is fed only while every task makes progress, the broker is reached
# through the board's bounded DNS, a trial version confirms itself with its first publish,
# and a command id with non-ASCII characters comes back in a well-formed ack. The tasks are
# stepped by hand (each send() runs one turn up to its next sleep), on a board whose clock
# the case moves; MQTT goes to a scripted socket that answers like a broker would.
import json

import app
import mqtt

CFG = {
    "device_key": "PICO-1",
    "mqtt_password": "pw",
    "provision_key": None,
    "wifi": {"ssid": "x", "password": ""},
    "broker": {"host": "hub.local", "port": 1883},
    "hub_http": None,
    "ntp_host": None,
    "prefix": "picofleet",
    "device_type": "pico2_w",
    "channel": "stable",
    "ota_pubkey": None,
    "ota_key_id": None,
    "calibration": {"moisture_dry": 52000, "moisture_wet": 21000},
    "pump": {"max_run_s": 30, "cooldown_s": 300, "auto_below_pct": 25, "auto_run_s": 10},
    "telemetry_interval_s": 60,
    "pins": {"relay": 15, "relay_active_high": True, "moisture_adc": 26},
}


class FakeBoard:
    def __init__(self):
        self.t = 0
        self.feeds = []
        self.resolved = []
        self.passed = 0
        self.relay_log = []

    def ms(self):
        return self.t

    def feed(self):
        self.feeds.append(self.t)

    def watchdog(self):
        self.feed()

    def relay(self, on, max_ms=0):
        self.relay_log.append((on, max_ms))

    def resolve(self, host, port, limit_ms=20000):
        self.resolved.append(host)
        return ("10.0.0.9", port)

    def trial_passed(self):
        self.passed += 1

    def wifi_up(self):
        return True

    def rssi(self):
        return -60

    def moisture_raw(self):
        return 40000

    def temperature_c(self):
        return 21.5

    def supply_v(self):
        return 5.0

    def random_hex(self, n):
        return "ab" * n

    def reset(self):
        raise AssertionError("reset")


def _sleep(s):
    # asyncio.sleep for hand-stepped tasks: hands the duration to the stepper
    yield s


class FakeAsyncio:
    sleep = staticmethod(_sleep)


app.asyncio = FakeAsyncio


class BrokerSock:
    # Reads the client's packets as they are written and queues what a broker answers.
    def __init__(self):
        self.rx = b""
        self.buf = b""
        self.timeout = None
        self.published = []  # (flags, topic bytes, payload bytes)

    def settimeout(self, t):
        self.timeout = t

    def connect(self, addr):
        assert addr == ("10.0.0.9", 1883), addr

    def _packets(self):
        while len(self.buf) >= 2:
            n, i, shift = 0, 1, 0
            while True:
                d = self.buf[i]
                n |= (d & 0x7F) << shift
                shift += 7
                i += 1
                if not d & 0x80:
                    break
            if len(self.buf) < i + n:
                return
            yield self.buf[0], self.buf[i : i + n]
            self.buf = self.buf[i + n :]

    def write(self, b):
        assert self.timeout, "write without a timeout"
        self.buf += bytes(b)
        for h, body in self._packets():
            kind = h & 0xF0
            if kind == 0x10:
                self.rx += b"\x20\x02\x00\x00"
            elif kind == 0x80:
                self.rx += b"\x90\x03" + body[:2] + b"\x01"
            elif kind == 0x30:
                tn = body[0] << 8 | body[1]
                topic = body[2 : 2 + tn]
                qos = (h >> 1) & 3
                payload = body[2 + tn + (2 if qos else 0) :]
                self.published.append((h, topic, payload))
                if qos:
                    self.rx += b"\x40\x02" + body[2 + tn : 4 + tn]
        return len(b)

    def read(self, n):
        if not self.rx:
            if self.timeout == 0:
                return None
            raise OSError(110)
        d, self.rx = self.rx[:n], self.rx[n:]
        return d

    def recv(self, n):
        if not self.rx and self.timeout == 0:
            raise OSError(11)
        return self.read(n)

    def close(self):
        pass


class SocketModule:
    def __init__(self, sock):
        self.sock = sock

    def socket(self, *a):
        return self.sock

    def getaddrinfo(self, *a):
        raise AssertionError("getaddrinfo outside hw.Board.resolve: no bound on DNS")


def _app():
    b = FakeBoard()
    return app.App(dict(CFG), b, "1.1.0"), b


def _connected():
    a, b = _app()
    s = BrokerSock()
    mqtt.socket = SocketModule(s)
    a._connect()
    return a, b, s


def _step(task, b, t):
    b.t = t
    return task.send(None)


def test_control_stops_feeding_the_watchdog_when_the_net_task_is_stuck():
    a, b = _app()
    control, sampler = a._control(), a._sampler()
    # the net task never runs again (stuck on an await); control and sampler carry on
    for t in range(0, 60001, 200):
        b.t = t
        if t % 5000 == 0:
            sampler.send(None)
        control.send(None)
    fed_late = [t for t in b.feeds if t >= 40000]
    assert b.feeds and b.feeds[0] == 0
    assert fed_late == [], "fed while the net task was stuck for %d s" % (b.feeds[-1] // 1000)


def test_control_feeds_while_all_tasks_make_progress():
    a, b = _app()
    control, sampler = a._control(), a._sampler()
    for t in range(0, 60001, 200):
        b.t = t
        if t % 5000 == 0:
            sampler.send(None)
            a._progress()  # what the net task does at each turn
        control.send(None)
    assert len([t for t in b.feeds if t >= 40000]) >= 90


def test_the_broker_address_comes_from_the_board_resolver():
    a, b, s = _connected()
    assert b.resolved == ["hub.local"]
    assert s.published[0][1] == b"picofleet/devices/PICO-1/status"
    assert a.t_channel == "picofleet/ota/pico2_w/stable"  # a Pico 2 W's rollouts


def test_first_publish_confirms_the_trial():
    a, b, s = _connected()
    a._sample()
    assert b.passed == 0
    d = a._drain()
    try:
        while True:
            d.send(None)
    except StopIteration:
        pass
    assert b.passed == 1
    assert s.published[-1][1] == b"picofleet/devices/PICO-1/telemetry"


def test_non_ascii_command_id_is_acked_in_a_well_formed_packet():
    a, b, s = _connected()
    cid = "\u6c34\u00e9-1"
    a.cmds.append(json.dumps({"cmd": "pump", "seconds": 5, "id": cid}).encode())
    a._commands()
    h, topic, payload = s.published[-1]
    assert s.buf == b""  # every byte the client wrote belonged to a whole packet
    ack = json.loads(payload)["ack"]
    assert ack["id"] == cid and ack["ok"], ack
    assert b.relay_log[-1][0] is True


def test_idle_on_a_bad_config_keeps_the_relay_off_and_the_watchdog_fed():
    b = FakeBoard()
    idle = app._idle(b, "config.json is missing")
    for _ in range(3):
        idle.send(None)
    assert b.relay_log == [(False, 0)] and len(b.feeds) == 3


def test_an_escaped_astral_id_comes_back_as_utf8():
    # CPython's json.dumps writes U+1F331 as the escape pair \ud83c\udf31
    a, b, s = _connected()
    a.cmds.append(b'{"cmd": "stop", "id": "\\ud83c\\udf31-\\u00e9 \\ud83c!"}')
    a._commands()
    payload = s.published[-1][2]
    assert "\U0001f331-\u00e9 \ufffd!".encode() in payload, payload
