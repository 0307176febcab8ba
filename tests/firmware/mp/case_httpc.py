# httpc: the pure parts (URLs, the Date header).
import httpc


def test_split_url():
    assert httpc.split_url("http://10.0.0.2:8000/ota/artifacts/ab") == (
        "10.0.0.2",
        8000,
        "/ota/artifacts/ab",
    )
    assert httpc.split_url("http://hub") == ("hub", 80, "/")
    for bad in ("https://hub/", "ftp://x", "http://:80/", "http://h:x/"):
        try:
            httpc.split_url(bad)
            raise AssertionError(bad)
        except httpc.HttpError:
            pass


def test_parse_date():
    assert httpc.parse_date("Sun, 06 Nov 1994 08:49:37 GMT") == 784111777
    assert httpc.parse_date("Thu, 01 Jan 1970 00:00:00 GMT") == 0
    assert httpc.parse_date("Tue, 29 Feb 2028 12:00:00 GMT") == 1835438400
    assert httpc.parse_date("garbage") is None
    assert httpc.parse_date("") is None


# get() over a scripted socket with rp2's semantics: recv(n) gives what is there, up to n;
# OSError 110 once nothing more comes within the timeout.
import socket  # noqa: E402  (the unit cases' stand-in; get() asks it for a socket)
import time  # noqa: E402

WATCHDOG_S = 8


class FakeSock:
    def __init__(self, data, drip_ms=0):
        self.data = data
        self.timeout = None
        self.log = []
        self.drip_ms = drip_ms  # one byte per recv, this long after the last

    def settimeout(self, t):
        self.timeout = t

    def _call(self, what):
        self.log.append(what)
        assert self.timeout is not None and 0 < self.timeout < WATCHDOG_S / 2, self.timeout

    def connect(self, addr):
        self._call("connect")

    def write(self, b):
        self._call("write")
        return len(b)

    def recv(self, n):
        self._call("recv")
        if not self.data:
            raise OSError(110)
        if self.drip_ms:
            time.sleep_ms(self.drip_ms)
            n = 1
        d, self.data = self.data[:n], self.data[n:]
        return d

    def close(self):
        self.log.append("close")


def _get(data, feed=None, drip_ms=0):
    s = FakeSock(data, drip_ms)
    socket.socket = lambda *a: s
    return s, httpc.get("http://10.0.0.2:8000/x", feed=feed, resolve=lambda h, p: (h, p))


def _http_error(data):
    try:
        _get(data)
    except httpc.HttpError:
        return
    raise AssertionError("no HttpError for %r" % data)


def test_get_reads_status_and_headers():
    fed = []
    s, r = _get(
        b"HTTP/1.0 206 Partial\r\nContent-Length: 3\r\nDate: x\r\n\r\nabc", lambda: fed.append(1)
    )
    assert r.status == 206 and r.headers == {"content-length": "3", "date": "x"}
    buf = bytearray(8)
    assert r.readinto(buf) == 3 and buf[:3] == b"abc"
    # the watchdog was fed before each blocking call: lookup, connect, write, 4 lines
    assert len(fed) >= 7, fed


def test_malformed_status_lines_are_http_errors():
    for line in (
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 -1 OK\r\n\r\n",
        b"HTTP/1.1 \xff\xfe\xfd\r\n\r\n",
        b"\xff\xfe\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"\r\n",
    ):
        _http_error(line)


def test_headers_that_are_not_utf8_are_http_errors():
    _http_error(b"HTTP/1.1 200 OK\r\nDate: \xff\xfe\r\n\r\n")
    _http_error(b"HTTP/1.1 200 OK\r\nX-\xc3(: 1\r\n\r\n")


def test_endless_headers_are_bounded():
    _http_error(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 600 + b"\r\n\r\n")
    _http_error(b"HTTP/1.1 200 OK\r\n" + b"X: 1\r\n" * 40 + b"\r\n")


def test_a_dripping_head_ends_in_bounded_time():
    # each byte within the timeout, the whole head would take 4 s: HEAD_MS bounds it
    old, httpc.HEAD_MS = httpc.HEAD_MS, 500
    try:
        t = time.ticks_ms()
        try:
            _get(b"HTTP/1.0 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n", None, 50)
            raise AssertionError("no HttpError")
        except httpc.HttpError as e:
            assert "head" in str(e), e
        assert time.ticks_diff(time.ticks_ms(), t) < 1500
    finally:
        httpc.HEAD_MS = old


def test_a_silent_server_times_out_with_oserror():
    try:
        _get(b"")
        raise AssertionError("no error")
    except OSError as e:
        assert e.args[0] == 110
