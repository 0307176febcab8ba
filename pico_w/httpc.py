# A small HTTP/1.0 client on a raw socket: GET with an optional `Range: bytes=N-`, status and
# headers parsed, the body streamed into the caller's buffer (nothing is read whole into RAM).
# Used for OTA artifacts and for the hub's Date header when NTP is out of reach. Every socket
# call has a timeout shorter than the watchdog's and `feed` runs before each one; reads use
# recv (what is there, at once: rp2's readline and readinto wait for all of it, a timeout
# per byte), the status line and headers must all arrive within HEAD_MS and are bounded in
# count and length. Whatever the server sends, get() raises only OSError or HttpError (a
# malformed status line or a header that is not UTF-8 included).
import time


_LINE_MAX = 512
_HEADERS_MAX = 32
HEAD_MS = 5000
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class HttpError(Exception):
    pass


def split_url(url):
    # (host, port, path) of an http:// URL.
    if not url.startswith("http://"):
        raise HttpError("only http:// URLs are supported")
    rest = url[7:]
    i = rest.find("/")
    hostport, path = (rest, "/") if i < 0 else (rest[:i], rest[i:])
    host, _, port = hostport.partition(":")
    if not host:
        raise HttpError("URL without a host")
    try:
        port = int(port) if port else 80
    except ValueError:
        raise HttpError("bad port in URL")
    return host, port, path


class Response:
    def __init__(self, sock, status, headers):
        self.status = status
        self.headers = headers  # lower-case names
        self._sock = sock

    def readinto(self, buf):
        # Bytes read into buf (a bytearray or memoryview); 0 at the end of the body.
        d = self._sock.recv(len(buf))
        buf[: len(d)] = d
        return len(d)

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _line(s, feed, end):
    # One header line, byte by byte (the head is small; the body is not read here).
    out = bytearray()
    while len(out) < _LINE_MAX:
        if time.ticks_diff(end, time.ticks_ms()) <= 0:
            raise HttpError("no complete head within %d ms" % HEAD_MS)
        if feed:
            feed()
        b = s.recv(1)
        if not b:
            return bytes(out)  # the server closed
        out.extend(b)
        if b == b"\n":
            return bytes(out)
    raise HttpError("line longer than %d bytes" % _LINE_MAX)


def _status(line):
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise HttpError("not an HTTP response")
    code = parts[1]
    if len(code) != 3 or not code.isdigit():
        raise HttpError("bad status code")
    return int(code)


def _text(b):
    try:
        return b.strip().decode()
    except UnicodeError:
        raise HttpError("header is not UTF-8")


def get(url, start=0, timeout=3, feed=None, resolve=None):
    # feed: called before every blocking call (the caller's watchdog); resolve(host, port):
    # the address to connect to (hw.Board.resolve bounds DNS), getaddrinfo when None.
    import socket

    host, port, path = split_url(url)
    if feed:
        feed()
    addr = resolve(host, port) if resolve else socket.getaddrinfo(host, port)[0][-1]
    s = socket.socket()
    try:
        s.settimeout(timeout)
        if feed:
            feed()
        s.connect(addr)
        req = "GET %s HTTP/1.0\r\nHost: %s\r\n" % (path, host)
        if start:
            req += "Range: bytes=%d-\r\n" % start
        if feed:
            feed()
        s.write((req + "User-Agent: picofleet-pico_w\r\n\r\n").encode())
        end = time.ticks_add(time.ticks_ms(), HEAD_MS)
        status = _status(_line(s, feed, end))
        headers = {}
        for _ in range(_HEADERS_MAX):
            line = _line(s, feed, end)
            if not line or line == b"\r\n":
                break
            name, _, value = line.partition(b":")
            headers[_text(name).lower()] = _text(value)
        else:
            raise HttpError("more than %d headers" % _HEADERS_MAX)
    except BaseException:
        s.close()
        raise
    return Response(s, status, headers)


def parse_date(text):
    # Unix seconds of an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"), or None.
    try:
        _, day, mon, year, hms, _ = text.split()
        month = _MONTHS.index(mon) + 1
        h, mi, s = hms.split(":")
        return _days(int(year), month, int(day)) * 86400 + int(h) * 3600 + int(mi) * 60 + int(s)
    except ValueError:
        return None


def _days(y, m, d):
    # Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def server_time(url, timeout=3, feed=None, resolve=None):
    # Unix time from the Date header of a GET, or None.
    try:
        r = get(url, timeout=timeout, feed=feed, resolve=resolve)
    except (OSError, HttpError):
        return None
    try:
        return parse_date(r.headers.get("date", ""))
    finally:
        r.close()
