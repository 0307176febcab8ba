# mqtt: the firmware's MQTT 3.1.1 client against byte vectors of the MQTT 3.1.1 spec, over a
# scripted socket with rp2's semantics, pieces arriving as scripted (recv returns what is
# there, up to n; OSError 110 past the timeout; read(1) gives None and recv EAGAIN when
# non-blocking and empty; b"" once the peer closed). The same
# client against real brokers: tests/firmware/test_mqtt_broker.py.
import gc
import time

import mqtt

CFG = {"broker": {"host": "10.0.0.1", "port": 1883}, "device_key": "PICO-1", "mqtt_password": "pw"}


class FakeSock:
    def __init__(self, incoming=(), big=0):
        self.chunks = list(incoming)  # bytes objects; an int n is n bytes of b"x"
        self.out = bytearray()
        self.timeout = None
        self.calls = 0
        self.untimed = []  # socket calls made without a timeout set
        self.closed = False
        self.peer_closed = False
        self.connected = None
        self.drip_ms = 0
        self.max_n = 0  # the most bytes asked for in one call

    def _check(self, what):
        self.calls += 1
        if self.timeout is None:
            self.untimed.append(what)

    def settimeout(self, t):
        self.timeout = t

    def connect(self, addr):
        self._check("connect")
        self.connected = addr

    def write(self, buf):
        self._check("write")
        self.out.extend(bytes(buf))
        return len(buf)

    def read(self, n):
        self._check("read")
        self.max_n = max(self.max_n, n)
        while self.chunks and not self.chunks[0]:
            self.chunks.pop(0)
        if not self.chunks:
            if self.peer_closed:
                return b""
            if self.timeout == 0:
                return None
            raise OSError(110)
        c = self.chunks[0]
        if isinstance(c, int):  # a long run of filler, made on demand
            k = min(n, c, 1000)
            self.chunks[0] = c - k
            return b"x" * k
        d = c[:n]
        self.chunks[0] = c[n:]
        return d

    def recv(self, n):
        # lwIP's recv: what is there, up to n; EAGAIN when non-blocking and empty
        if self.timeout == 0 and not self.peer_closed and not any(self.chunks):
            self._check("recv")
            raise OSError(11)
        if self.drip_ms:  # one byte at a time, each within the timeout
            time.sleep_ms(self.drip_ms)
            n = 1
        return self.read(n)

    def close(self):
        self.closed = True


class FakeSocketModule:
    def __init__(self, sock):
        self.sock = sock

    def socket(self, *args):
        return self.sock

    def getaddrinfo(self, host, port, *args):
        return [(2, 1, 0, "", (host, port))]


def _session(incoming=(), keepalive=30, **kw):
    s = FakeSock(incoming)
    mqtt.socket = FakeSocketModule(s)
    got = []
    sess = mqtt.Session(
        CFG, "pf/devices/PICO-1/status", lambda t, m: got.append((t, m)), keepalive, 3, **kw
    )
    return sess, s, got


def _raises(fn):
    try:
        fn()
    except mqtt.MqttError as e:
        assert isinstance(e, OSError)
        return str(e)
    raise AssertionError("no MqttError")


CONNACK_OK = b"\x20\x02\x00\x00"


def _connected(incoming=(), **kw):
    chunks = list(incoming)
    chunks.insert(0, CONNACK_OK)
    sess, s, got = _session(chunks, **kw)
    sess.connect(0)
    s.out = bytearray()
    return sess, s, got


def test_remaining_length_vectors_of_the_spec():
    # MQTT 3.1.1 table 2.4: the boundaries of one to four length bytes
    table = (
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16383, b"\xff\x7f"),
        (16384, b"\x80\x80\x01"),
        (2097151, b"\xff\xff\x7f"),
        (2097152, b"\x80\x80\x80\x01"),
        (268435455, b"\xff\xff\xff\x7f"),
    )
    for n, enc in table:
        sess, s, _ = _session([enc])
        sess.sock = s
        s.settimeout(3)
        assert sess._length() == n, n
    # and the encoder, on lengths small enough to build
    for n, enc in table[:5]:
        assert bytes(mqtt.packet(0x30, bytes(n))[1 : 1 + len(enc)]) == enc, n


def test_remaining_length_of_five_bytes_is_refused():
    sess, s, _ = _session([b"\xff\xff\xff\xff\x7f"])
    sess.sock = s
    s.settimeout(3)
    _raises(sess._length)


def test_connect_packet_bytes():
    # MQTT 3.1.1 3.1: protocol name, level 4, flags (user, password, will retain, will QoS 1,
    # will, clean session = 0xEE), keepalive, then client id, will topic, will message,
    # user name, password, each with a two-byte length.
    sess, s, _ = _session([CONNACK_OK], keepalive=30)
    sess.connect(0)
    body = (
        b"\x00\x04MQTT\x04\xee\x00\x1e"
        + b"\x00\x06PICO-1"
        + b"\x00\x18pf/devices/PICO-1/status"
        + b'\x00\x13{"state":"offline"}'
        + b"\x00\x06PICO-1"
        + b"\x00\x02pw"
    )
    assert bytes(s.out) == b"\x10" + bytes((len(body),)) + body, bytes(s.out)
    assert s.connected == ("10.0.0.1", 1883)


def test_connect_refused_and_broken_connack():
    for reply in (b"\x20\x02\x00\x05", b"\x20\x03\x00\x00\x00", b"\x90\x03\x00\x01\x00"):
        sess, s, _ = _session([reply])
        _raises(lambda sess=sess: sess.connect(0))
        assert s.closed and sess.sock is None
    sess, s, _ = _session([])
    s.peer_closed = True
    _raises(lambda: sess.connect(0))


def test_every_socket_call_has_a_timeout():
    sess, s, got = _connected([b"\x90\x03\x00\x01\x01", b"\x40\x02\x00\x02"])
    sess.subscribe("pf/cmd")
    sess.publish("pf/t", b"{}", 0)
    sess.poll()
    assert s.calls > 6 and not s.untimed
    # a broker that stops answering: the read times out and the session ends
    _raises(lambda: sess.publish("pf/t", b"{}", 0))


def test_subscribe_and_suback():
    sess, s, _ = _connected([b"\x90\x03\x00\x01\x01"])
    sess.subscribe("a/b")
    assert bytes(s.out) == b"\x82\x08\x00\x01\x00\x03a/b\x01"
    sess2, _, _ = _connected([b"\x90\x03\x00\x01\x80"])
    assert "refused" in _raises(lambda: sess2.subscribe("a/b"))


def test_publish_non_ascii_counts_bytes():
    sess, s, _ = _connected([b"\x40\x02\x00\x01"])
    sess.publish("pf/\u00e9", '{"id":"\u6c34\u00e9"}', 0, retain=True)
    topic = "pf/\u00e9".encode()
    payload = '{"id":"\u6c34\u00e9"}'.encode()
    body = bytes((0, len(topic))) + topic + b"\x00\x01" + payload
    assert bytes(s.out) == b"\x33" + bytes((len(body),)) + body
    assert len(body) == 2 + 5 + 2 + 14  # 4 characters of topic, 12 of payload


def test_publish_qos0_waits_for_nothing():
    sess, s, _ = _connected()
    sess.publish("t", b"x", 0, qos=0)
    assert bytes(s.out) == b"\x30\x04\x00\x01tx"


def test_packet_ids_wrap_and_skip_zero():
    acks = [b"\x40\x02\xff\xff", b"\x40\x02\x00\x01", b"\x40\x02\x00\x02"]
    sess, s, _ = _connected(acks)
    sess.pid = 65534
    for _ in range(3):
        sess.publish("t", b"x", 0)
    # three PUBLISHes with ids 65535, 1, 2
    assert (
        bytes(s.out)
        == b"\x32\x06\x00\x01t\xff\xffx\x32\x06\x00\x01t\x00\x01x\x32\x06\x00\x01t\x00\x02x"
    )


def test_late_puback_and_incoming_publish_while_waiting():
    incoming = [b"\x40\x02\x00\x07", b"\x32\x09\x00\x03cmd\x00\x09{}", b"\x40\x02\x00\x01"]
    sess, s, got = _connected(incoming)
    sess.publish("t", b"x", 0)
    assert got == [(b"cmd", b"{}")]
    assert bytes(s.out).endswith(b"\x40\x02\x00\x09")  # the incoming QoS 1 was acknowledged


def test_receive_qos0_and_qos1():
    q0 = b"\x30\x07\x00\x03a/b" + b"hi"
    q1 = b"\x32\x0c\x00\x03a/b\x12\x34" + "\u00e9\u00e9".encode() + b"!"
    sess, s, got = _connected([q0, q1])
    sess.poll()
    assert got == [(b"a/b", b"hi"), (b"a/b", "\u00e9\u00e9!".encode())]
    assert bytes(s.out) == b"\x40\x02\x12\x34"
    sess.poll()  # nothing there: returns at once
    assert len(got) == 2


def test_oversized_publish_is_read_past_and_acknowledged():
    # a retained message of 2 MB (bigger than the heap of a Pico W), then a command
    n = 2 * 1024 * 1024
    rl = 2 + 3 + 2 + n
    enc = bytearray()
    while True:
        d = rl & 0x7F
        rl >>= 7
        enc.append(d | 0x80 if rl else d)
        if not rl:
            break
    big = (b"\x33" + bytes(enc) + b"\x00\x03ota\x00\x05", n, b"\x32\x09\x00\x03cmd\x00\x06{}")
    sess, s, got = _connected(big)
    sess.poll()
    assert s.max_n <= 256  # never asked for more than a small piece of it
    assert got == [(b"cmd", b"{}")]
    assert sess.dropped == 1
    assert bytes(s.out) == b"\x40\x02\x00\x05\x40\x02\x00\x06"


def test_a_dripping_packet_ends_the_session_in_bounded_time():
    # every byte comes within the timeout, the packet would take 4 s: each field of a
    # packet must arrive within 2 x timeout (here 0.2 s x 2)
    sess, s, _ = _connected([b"\x32\x29\x00\x03cmd\x00\x09" + b"x" * 34])
    sess._t = 0.2
    s.drip_ms = 100
    t = time.ticks_ms()
    assert "too slow" in _raises(sess.poll)
    assert time.ticks_diff(time.ticks_ms(), t) < 2000


def test_oversized_other_packet_ends_the_session():
    sess, s, _ = _connected([b"\x90\xff\x7f"])
    _raises(sess.poll)


def test_qos2_and_short_publish_end_the_session():
    for p in (b"\x34\x07\x00\x01a\x00\x01xy", b"\x30\x01\x00", b"\x32\x04\x00\x05ab"):
        sess, s, _ = _connected([p])
        _raises(sess.poll)


def test_keepalive_pings_and_gives_up_without_pingresp():
    sess, s, _ = _connected(keepalive=30)
    sess.keepalive(14999)
    assert bytes(s.out) == b""
    sess.keepalive(15000)
    assert bytes(s.out) == b"\xc0\x00"
    s.chunks.append(b"\xd0\x00")
    sess.poll()
    sess.keepalive(30000)
    sess.keepalive(59999)  # that PINGREQ stays unanswered
    _raises(lambda: sess.keepalive(60000))


def test_closed_and_timed_out_connections_raise_mqtt_error():
    sess, s, _ = _connected()
    s.peer_closed = True
    _raises(sess.poll)
    sess, s, _ = _connected()
    _raises(lambda: sess.publish("t", b"x", 0))  # no PUBACK: OSError 110 -> MqttError


def test_feed_runs_before_every_socket_call():
    fed = []
    sess, s, _ = _connected([b"\x40\x02\x00\x01"], feed=lambda: fed.append(1))
    n = len(fed)
    sess.publish("t", b"x", 0)
    assert len(fed) - n >= 2  # the write and the read of the PUBACK


def test_close_sends_nothing():
    sess, s, _ = _connected()
    sess.close()
    assert s.closed and bytes(s.out) == b""
    sess.close()


# -- read past a huge message, and nothing of it stays: measured across a collection, which
# this interpreter makes only between two top-level runs (tests/firmware/run_mpy.mjs)
_HUGE = 1024 * 1024
_sess, _s, _got = _connected((b"\x33\x87\x80\x40\x00\x03ota\x00\x05", _HUGE))
gc.collect()
#:collect
_before = gc.mem_alloc()
_sess.poll()
_sess = _s = None
gc.collect()
#:collect
_grown = gc.mem_alloc() - _before


def test_a_huge_message_leaves_nothing_behind():
    assert _got == [] and _grown < 8192, _grown
