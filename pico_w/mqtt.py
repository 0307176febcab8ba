# The firmware's own MQTT 3.1.1 client: one session with the broker, nothing installed from
# outside (a board in the field cannot `mip install` a known version, so the file the tests
# run is the file the board runs). What it does and bounds:
#   - CONNECT with last will, username/password, keepalive, clean session; CONNACK checked
#   - SUBSCRIBE QoS 1 and its SUBACK; PUBLISH QoS 0/1, QoS 1 returns once PUBACKed
#   - incoming PUBLISH QoS 0/1 (PUBACK sent), PINGREQ when idle, PINGRESP expected back
#   - every length counts UTF-8 bytes; packet ids run 1..65535, never 0
#   - every socket call has a timeout (settimeout) and `feed` runs before each one, so no
#     single call outlasts the watchdog; reads use recv (what is there, at once: rp2's read
#     and readinto wait for all n bytes, a timeout per piece), and one packet field must
#     arrive within 2 x timeout; poll() never waits
#   - an incoming packet larger than `max_in` is never held in RAM: a PUBLISH is read past
#     in small pieces (and acknowledged), anything else ends the session
#   - TLS when the caller passes an SSLContext (tls_context: the hub's CA only, certificate
#     required, server name checked): the socket is non-blocking under mbedTLS and every
#     read or write is polled here, the watchdog fed between polls, so the handshake (run
#     inside the first write: CONNECT, hence the password, only goes out once the hub's
#     certificate checked out) and each later call are bounded like the plain socket's
# Every failure raises MqttError (an OSError), which the app answers with a reconnect; that
# includes a refused certificate (mbedTLS raises ValueError for it).
import socket
import time

_OFFLINE = b'{"state":"offline"}'
CONNECT = 0x10
CONNACK = 0x20
PUBLISH = 0x30
PUBACK = 0x40
SUBSCRIBE = 0x80
SUBACK = 0x90
PINGREQ = 0xC0
PINGRESP = 0xD0
MAX_IN = 4096  # the largest packet kept: OTA metas are ~700 bytes, commands less
_CHUNK = 256
_POLL_MAX = 8  # packets handled per poll()
_EAGAIN = (11, 110)  # EAGAIN, ETIMEDOUT: nothing there (yet)
HANDSHAKE_MS = 20000  # a TLS handshake on a 125 MHz M0+ takes seconds (ECDHE, ECDSA checks)
_TLS_POLL_MS = 5


class MqttError(OSError):
    pass


def tls_context(cas):
    # An SSLContext that trusts only `cas` (DER certificates: the hub's CA). ssl's own default
    # for a client is CERT_NONE, so the mode is set here; a CA mbedTLS cannot parse is an
    # MqttError (a reconnect, never a reset loop).
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        for der in cas:
            ctx.load_verify_locations(cadata=der)
    except (OSError, ValueError) as e:
        raise MqttError("ca_pem: %r" % (e,))
    return ctx


def _b(s):
    return s.encode() if isinstance(s, str) else bytes(s)


def _str(out, s):
    # A length-prefixed UTF-8 string (MQTT 1.5.3): the length counts bytes.
    b = _b(s)
    if len(b) > 65535:
        raise MqttError("string longer than 65535 bytes")
    out.append(len(b) >> 8)
    out.append(len(b) & 0xFF)
    out.extend(b)


def packet(kind, body):
    # Fixed header (type and flags, remaining length varint) + body.
    n = len(body)
    if n > 268435455:
        raise MqttError("packet too large")
    out = bytearray((kind,))
    while True:
        d = n & 0x7F
        n >>= 7
        out.append(d | 0x80 if n else d)
        if not n:
            break
    out.extend(body)
    return out


def connect_packet(client_id, user, password, keepalive, will_topic=None, will_msg=b""):
    flags = 0x02  # clean session
    body = bytearray(b"\x00\x04MQTT\x04\x00")
    body.append(keepalive >> 8)
    body.append(keepalive & 0xFF)
    _str(body, client_id)
    if will_topic is not None:
        flags |= 0x04 | 0x08 | 0x20  # will, QoS 1, retained
        _str(body, will_topic)
        _str(body, will_msg)
    if user is not None:
        flags |= 0x80
        _str(body, user)
        if password is not None:
            flags |= 0x40
            _str(body, password)
    body[7] = flags
    return packet(CONNECT, body)


def publish_packet(topic, payload, qos, pid, retain=False, dup=False):
    body = bytearray()
    _str(body, topic)
    if qos:
        body.append(pid >> 8)
        body.append(pid & 0xFF)
    body.extend(_b(payload))
    return packet(PUBLISH | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0), body)


def subscribe_packet(topic, qos, pid):
    body = bytearray((pid >> 8, pid & 0xFF))
    _str(body, topic)
    body.append(qos)
    return packet(SUBSCRIBE | 0x02, body)


class Session:
    def __init__(
        self, cfg, status_topic, on_message, keepalive, timeout, feed=None, addr=None, tls=None
    ):
        # addr: the broker's (ip, port) when the caller resolved it (hw.Board.resolve bounds
        # DNS); else getaddrinfo here. on_message(topic bytes, payload bytes). tls: an
        # SSLContext (tls_context) for a broker that speaks TLS, else None.
        b = cfg["broker"]
        self._host = b["host"]
        self._port = b["port"]
        self._addr = addr
        self._id = cfg["device_key"]
        self._pw = cfg["mqtt_password"]
        self._will = status_topic
        self._cb = on_message
        self._ka = keepalive
        self._t = timeout
        self._feed = feed
        self._half_ms = keepalive * 500
        self._sent = 0
        self._ping_at = None  # when an unanswered PINGREQ went out
        self._tls = tls
        self._raw = None  # the TCP socket under TLS (self.sock is then the SSL socket)
        self.sock = None
        self.pid = 0  # the last packet id used
        self.max_in = MAX_IN
        self.dropped = 0  # incoming PUBLISHes too large to keep

    # -- socket calls: each bounded by the timeout, the watchdog fed before it -------------
    def _io(self):
        s = self.sock
        if s is None:
            raise MqttError("not connected")
        if self._feed is not None:
            self._feed()
        return s

    def _secure(self):
        return self._raw is not None and self.sock is not self._raw

    def _poll_tls(self, out, arg, limit_ms):
        # One TLS write (out) or read on the non-blocking SSL socket, polled until it moves:
        # None means mbedTLS is waiting on the network (a record, a handshake step).
        end = time.ticks_add(time.ticks_ms(), limit_ms)
        while True:
            s = self._io()
            try:
                r = s.write(arg) if out else s.read(arg)
            except ValueError as e:  # mbedTLS: the certificate did not verify
                raise MqttError("hub certificate refused: %s" % str(e).strip())
            except OSError as e:
                raise MqttError("tls %s: %r" % ("write" if out else "read", e))
            if r is not None:
                return r
            if time.ticks_diff(end, time.ticks_ms()) <= 0:
                raise MqttError("tls %s timed out" % ("write" if out else "read"))
            time.sleep_ms(_TLS_POLL_MS)

    def _write(self, buf, limit_ms=None):
        mv = memoryview(buf)
        while len(mv):
            if self._secure():
                n = self._poll_tls(True, mv, limit_ms or int(1000 * self._t))
            else:
                try:
                    n = self._io().write(mv)
                except OSError as e:
                    raise MqttError("write: %r" % (e,))
            if not n:
                raise MqttError("write timed out")
            mv = mv[n:]

    def _recv(self, n):
        if self._secure():
            d = self._poll_tls(False, n, int(1000 * self._t))
        else:
            try:
                d = self._io().recv(n)
            except OSError as e:
                raise MqttError("read: %r" % (e,))
        if not d:
            raise MqttError("connection closed by the broker")
        return d

    def _read(self, n):
        d = self._recv(n)
        if len(d) == n:
            return d
        out = bytearray(d)
        end = time.ticks_add(time.ticks_ms(), int(2000 * self._t))
        while len(out) < n:
            if time.ticks_diff(end, time.ticks_ms()) <= 0:
                raise MqttError("broker too slow: %d of %d bytes" % (len(out), n))
            out.extend(self._recv(n - len(out)))
        return bytes(out)

    def _skip(self, n):
        # Read past n bytes, a small piece at a time (garbage the GC takes back).
        while n > 0:
            n -= len(self._recv(min(n, _CHUNK)))

    def _length(self):
        # Remaining length (MQTT 2.2.3): at most four bytes, 7 bits each.
        n = 0
        for i in range(4):
            d = self._read(1)[0]
            n |= (d & 0x7F) << (7 * i)
            if not d & 0x80:
                return n
        raise MqttError("remaining length longer than 4 bytes")

    def _pending(self):
        # The first byte of the next packet if one is there, without waiting.
        s = self._io()
        if self._secure():
            try:
                d = s.read(1)  # non-blocking: None when no record is complete
            except (OSError, ValueError) as e:
                raise MqttError("tls read: %r" % (e,))
        else:
            try:
                s.settimeout(0)
                d = s.read(1)
            except OSError as e:
                if e.args and e.args[0] in _EAGAIN:
                    d = None
                else:
                    raise MqttError("read: %r" % (e,))
            finally:
                s.settimeout(self._t)
        if d is None:
            return None
        if not d:
            raise MqttError("connection closed by the broker")
        return d[0]

    # -- packets in ------------------------------------------------------------------------
    def _next(self, first=None):
        # Read one packet; PUBLISH and PINGRESP are handled here. Returns (type, body) of
        # anything else (body bytes, at most max_in long).
        h = self._read(1)[0] if first is None else first
        n = self._length()
        kind = h & 0xF0
        if kind == PUBLISH:
            self._publish_in(h, n)
            return PUBLISH, None
        if n > self.max_in:
            raise MqttError("packet of %d bytes from the broker" % n)
        body = self._read(n) if n else b""
        if kind == PINGRESP:
            self._ping_at = None
        return kind, body

    def _publish_in(self, h, n):
        qos = (h >> 1) & 3
        if qos == 3:
            raise MqttError("PUBLISH with QoS 3")
        if qos == 2:
            raise MqttError("PUBLISH with QoS 2 (subscribed with 1)")
        if n < 2:
            raise MqttError("PUBLISH too short")
        tn = self._read(2)
        tn = tn[0] << 8 | tn[1]
        rest = n - 2 - tn - (2 if qos else 0)
        if rest < 0:
            raise MqttError("PUBLISH shorter than its topic")
        big = n > self.max_in
        if big:
            self._skip(tn)
            topic = None
        else:
            topic = self._read(tn)
        pid = 0
        if qos:
            p = self._read(2)
            pid = p[0] << 8 | p[1]
        if big:
            self._skip(rest)
            self.dropped += 1
        else:
            msg = self._read(rest) if rest else b""
        if qos:
            self._write(packet(PUBACK, bytes((pid >> 8, pid & 0xFF))))
        if not big:
            self._cb(topic, msg)

    def _wait(self, kind, pid):
        # Read until the packet `kind` with packet id `pid` arrives; PUBLISHes that come
        # first are delivered on the way. The broker has keepalive x 1.5 to answer.
        for _ in range(64):
            k, body = self._next()
            if k == PUBLISH:
                continue
            if k == kind and len(body) >= 2 and (body[0] << 8 | body[1]) == pid:
                return body
            if k in (PINGRESP, PUBACK, SUBACK):
                continue  # a late answer to an earlier request (one QoS 1 is in flight)
            raise MqttError("unexpected packet 0x%02x" % k)
        raise MqttError("no answer from the broker")

    # -- the app's calls -------------------------------------------------------------------
    def _next_pid(self):
        self.pid = self.pid % 65535 + 1
        return self.pid

    def connect(self, now):
        addr = self._addr
        if addr is None:
            if self._feed is not None:
                self._feed()
            addr = socket.getaddrinfo(self._host, self._port)[0][-1]
        s = socket.socket()
        self.sock = s
        self._raw = s
        try:
            s.settimeout(self._t)
            self._io().connect(addr)
            limit = None
            if self._tls is not None:
                # The handshake runs inside the first write (below), step by step.
                s.settimeout(0)
                self.sock = self._tls.wrap_socket(
                    s, server_hostname=self._host, do_handshake_on_connect=False
                )
                limit = HANDSHAKE_MS
            self._write(
                connect_packet(self._id, self._id, self._pw, self._ka, self._will, _OFFLINE),
                limit,
            )
            if self._read(1)[0] != CONNACK:
                raise MqttError("no CONNACK")
            if self._length() != 2:
                raise MqttError("bad CONNACK")
            ack = self._read(2)
            if ack[1]:
                raise MqttError("broker refused: code %d" % ack[1])
        except BaseException as e:
            self.close()
            if isinstance(e, (OSError, ValueError)) and not isinstance(e, MqttError):
                raise MqttError("connect: %r" % (e,))
            raise
        self._sent = now
        self._ping_at = None

    def subscribe(self, topic, qos=1):
        pid = self._next_pid()
        self._write(subscribe_packet(topic, qos, pid))
        body = self._wait(SUBACK, pid)
        if len(body) != 3 or body[2] not in (0, 1, 2):
            raise MqttError("subscription to %s refused" % topic)

    def publish(self, topic, payload, now, retain=False, qos=1):
        # Returns once the broker acknowledged (QoS 1); raises MqttError.
        pid = self._next_pid() if qos else 0
        self._write(publish_packet(topic, payload, qos, pid, retain))
        self._sent = now
        if qos:
            self._wait(PUBACK, pid)

    def poll(self):
        # Handle whatever arrived (on_message runs in here); never waits for a packet to
        # start, and reads one that started within the timeout.
        for _ in range(_POLL_MAX):
            h = self._pending()
            if h is None:
                return
            k, _ = self._next(h)
            if k not in (PUBLISH, PINGRESP, PUBACK, SUBACK):
                raise MqttError("unexpected packet 0x%02x" % k)

    def keepalive(self, now):
        if self._ping_at is not None and now - self._ping_at >= self._ka * 1000:
            raise MqttError("no PINGRESP within %d s" % self._ka)
        if now - self._sent >= self._half_ms:
            self._write(packet(PINGREQ, b""))
            self._sent = now
            if self._ping_at is None:
                self._ping_at = now

    def close(self):
        # Just drop the socket: no DISCONNECT, so the broker publishes the last will
        # ("offline") until the next session says otherwise.
        # Under TLS both: an SSL socket whose handshake failed has let go of its TCP socket.
        s, raw = self.sock, self._raw
        self.sock = self._raw = None
        for x in (s, raw):
            if x is not None:
                try:
                    x.close()
                except OSError:
                    pass
                if raw is s:
                    break
