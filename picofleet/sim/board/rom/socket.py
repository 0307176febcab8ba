# socket for the board (harness): TCP sockets that are real host sockets, with the semantics
# of rp2's lwIP socket (extmod/modlwip.c) and MicroPython's stream methods (py/stream.c):
#   timeout None = block forever, 0 = non-blocking, x = x s per call; a call that waits longer
#   raises OSError(ETIMEDOUT); read/readinto/readline return None when non-blocking with no
#   data, recv raises OSError(EAGAIN); read(n) keeps reading until n bytes or EOF and loses
#   what it had on a timeout; EOF is b''; a reset connection raises ECONNRESET (also for a
#   refused connect, as lwIP reports it); a closed socket raises EBADF.
# Received bytes stay in the host (lwIP's buffers are not on the MicroPython heap either) and
# are fetched only as the firmware asks for them. getaddrinfo has no timeout, as on rp2.
import binascii

import _rt

AF_INET = 2
AF_INET6 = 10
SOCK_STREAM = 1
SOCK_DGRAM = 2
SOCK_RAW = 3
IPPROTO_IP = 0
IPPROTO_TCP = 6
IPPROTO_UDP = 17
SOL_SOCKET = 1
SO_REUSEADDR = 4
SO_BROADCAST = 32
TCP_NODELAY = 1
MSG_PEEK = 1
MSG_DONTWAIT = 64

# host socket states; negative = -errno of a pending error
_NEW = 0
_CONNECTING = 1
_CONNECTED = 2
_PEER_CLOSED = 3


def getaddrinfo(host, port, af=0, type=0, proto=0, flags=0):
    # blocks until the lookup ends, however long (no timeout on rp2); timers run meanwhile
    q = _rt.call("resolve", host)
    while True:
        r = _rt.call("rwait", q, _rt.until_timer(1000))
        if r is not None:
            break
        _rt.run_timers()
    if isinstance(r, int):
        raise OSError(r)
    return [(AF_INET, SOCK_STREAM, 0, "", (r, port))]


class socket:
    def __init__(self, af=AF_INET, type=SOCK_STREAM, proto=0):
        if type != SOCK_STREAM:
            raise NotImplementedError("the board harness has TCP sockets only")
        self._id = _rt.call("sopen")
        self._t = -1

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def __repr__(self):
        return "<socket state=%d timeout=%d>" % (self._st()[0] if self._id else -9, self._t)

    # -- host link ---------------------------------------------------------------------
    def _st(self, what="rx", ms=0):
        # [state, bytes readable, bytes of send buffer free] after waiting up to ms for what
        r = _rt.call("swait", self._id, what, ms)
        return (r[0], r[1], r[2])

    def _wait(self, what, ready):
        # Wait for ready(state) with this socket's timeout; timers run meanwhile.
        # Returns the state, or None on timeout.
        t = self._t
        end = None if t < 0 else _rt.now_ms() + t
        while True:
            st = self._st()
            if ready(st):
                return st
            if end is not None:
                left = end - _rt.now_ms()
                if left <= 0:
                    return None
            else:
                left = -1
            ms = _rt.until_timer(left)
            if ms < 0 or ms > 1000:
                ms = 1000
            st = self._st(what, ms)
            if ready(st):
                return st
            _rt.run_timers()

    def _check(self):
        if self._id is None:
            raise OSError(_rt.EBADF)

    # lwip_tcp_receive: up to n bytes, b"" at EOF, or raises
    def _rx(self, n, flags=0):
        self._check()
        st = self._st()
        if st[0] < 0:
            raise OSError(-st[0])
        if st[1] == 0:
            if self._t == 0 or flags & MSG_DONTWAIT:
                if st[0] == _PEER_CLOSED:
                    return b""
                raise OSError(_rt.EAGAIN)
            if st[0] == _CONNECTED:
                st = self._wait("rx", lambda s: s[0] != _CONNECTED or s[1] > 0)
                if st is None:
                    raise OSError(_rt.ETIMEDOUT)
            if st[1] == 0:
                if st[0] == _PEER_CLOSED:
                    return b""
                if st[0] < 0:
                    raise OSError(-st[0])
                raise OSError(_rt.ENOTCONN)
        return bytes(_rt.call("srecv", self._id, n, 1 if flags & MSG_PEEK else 0))

    # lwip_tcp_send: some of buf, or raises
    def _tx(self, buf):
        self._check()
        st = self._st()
        if st[0] < 0:
            raise OSError(-st[0])
        room = st[2] if st[0] != _CONNECTING else 0
        if room == 0:
            if self._t == 0:
                raise OSError(_rt.EAGAIN)
            st = self._wait("tx", lambda s: s[0] < 0 or (s[0] >= _CONNECTED and s[2] >= 16))
            if st is None:
                raise OSError(_rt.ETIMEDOUT)
            if st[0] < 0:
                raise OSError(-st[0])
            room = st[2]
        if st[0] not in (_CONNECTED, _PEER_CLOSED):
            raise OSError(_rt.ENOTCONN)
        chunk = buf[:room] if len(buf) > room else buf
        return _rt.call("ssend", self._id, binascii.hexlify(chunk).decode())

    # -- socket methods ----------------------------------------------------------------
    def settimeout(self, t):
        self._t = -1 if t is None else int(1000 * t)

    def setblocking(self, flag):
        self._t = -1 if flag else 0

    def setsockopt(self, level, opt, val):
        self._check()

    def makefile(self, mode="rb", buffering=0):
        return self

    def bind(self, addr):
        self._check()

    def connect(self, addr):
        self._check()
        st = self._st()[0]
        if st != _NEW:
            raise OSError(_rt.EISCONN if st == _CONNECTED else _rt.EALREADY)
        err = _rt.call("sconnect", self._id, addr[0], addr[1])
        if err:
            raise OSError(err)
        st = self._wait("conn", lambda s: s[0] != _CONNECTING)
        if st is None:
            raise OSError(_rt.EINPROGRESS if self._t == 0 else _rt.ETIMEDOUT)
        if st[0] < 0:
            raise OSError(-st[0])

    def send(self, buf):
        self._check()
        return self._tx(memoryview(buf))

    def sendall(self, buf):
        self._check()
        mv = memoryview(buf)
        if self._t == 0 and len(mv) > self._st()[2]:
            raise OSError(_rt.EAGAIN)
        while len(mv):
            n = self._tx(mv)
            mv = mv[n:]

    def recv(self, n, flags=0):
        self._check()
        return self._rx(n, flags)

    def write(self, buf, n=None):
        # mp_stream_rw: write all of it; None if non-blocking and nothing went
        mv = memoryview(buf)
        if n is not None:
            mv = mv[:n]
        done = 0
        while len(mv):
            try:
                k = self._tx(mv)
            except OSError as e:
                if e.errno == _rt.EAGAIN:
                    return done if done else None
                raise
            if k == 0:
                break
            done += k
            mv = mv[k:]
        return done

    def read(self, n=-1):
        if n is None or n < 0:
            return self._readall()
        out = bytearray()
        while len(out) < n:
            try:
                b = self._rx(n - len(out))
            except OSError as e:
                if e.errno == _rt.EAGAIN:
                    if not out:
                        return None
                    break
                raise
            if not b:
                break
            out += b
        return bytes(out)

    def _readall(self):
        out = bytearray()
        while True:
            try:
                b = self._rx(256)
            except OSError as e:
                if e.errno == _rt.EAGAIN:
                    if not out:
                        return None
                    break
                raise
            if not b:
                break
            out += b
        return bytes(out)

    def readinto(self, buf, nbytes=None):
        mv = memoryview(buf)
        n = len(mv) if nbytes is None else min(nbytes, len(mv))
        done = 0
        while done < n:
            try:
                b = self._rx(n - done)
            except OSError as e:
                if e.errno == _rt.EAGAIN:
                    if not done:
                        return None
                    break
                raise
            if not b:
                break
            mv[done : done + len(b)] = b
            done += len(b)
        return done

    def readline(self, limit=-1):
        out = bytearray()
        while limit < 0 or len(out) < limit:
            try:
                b = self._rx(1)
            except OSError as e:
                if e.errno == _rt.EAGAIN:
                    if not out:
                        return None
                    break
                raise
            if not b:
                break
            out += b
            if b == b"\n":
                break
        return bytes(out)

    def close(self):
        if self._id is not None:
            _rt.call("sclose", self._id)
            self._id = None
