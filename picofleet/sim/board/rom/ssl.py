# ssl for the board (harness): the WebAssembly port has no ssl (no mbedTLS), so the host does
# the TLS (Node's tls.connect on the board's TCP connection: the CAs given here, the server
# name checked, TLS 1.2 and the cipher suites of rp2's mbedTLS config) while this module gives
# the firmware the API and the behaviour of rp2's ssl (micropython-lib ssl.py over extmod's
# modtls_mbedtls.c), so the firmware's own handling of a refused certificate is exercised:
#   - SSLContext(PROTOCOL_TLS_CLIENT) starts with verify_mode CERT_NONE (ssl.py sets it);
#     CERT_REQUIRED needs server_hostname; load_verify_locations(cadata=DER or PEM) adds to
#     the trusted CAs, ValueError("invalid cert") when it does not parse
#   - wrap_socket(sock, server_hostname=, do_handshake_on_connect=): the SSL socket has read,
#     readinto, readline, write, setblocking, close, cipher, getpeercert: no recv, send or
#     settimeout (rp2 has them only with DTLS); the TCP socket's timeout governs it
#   - a certificate that does not verify raises ValueError with mbedTLS's text ("\nThe
#     certificate validity has expired\n", "... not correctly signed by the trusted CA ...");
#     the certificate's dates are checked against the board's RTC (rp2's mbedTLS reads the
#     RTC), so a board whose clock was never set refuses a certificate from its future
#   - other failures are OSError: the TCP errno (104, 110) or mbedTLS's code (-30592 a fatal
#     alert), and they stay: every later call raises again; a failed session lets go of the
#     TCP socket, which its owner must close (rp2 does not close it either)
#   - the end of the stream is b"" (rp2: b"" after close_notify, OSError(-29312) without)
#   - blocking: read(n) returns n bytes (fewer at EOF), a wait longer than the timeout raises
#     OSError(110) and loses what the call had read; non-blocking: None while nothing is
#     there or a handshake step is pending, else what there is (up to n)
# Not modelled: mbedTLS itself (its parsing, its checks, its RAM: 16 KB in + 4 KB out
# buffers and the handshake's state on rp2's GC heap), the CPU time of a handshake on a
# 125 MHz M0+, the exact order in which mbedTLS and OpenSSL report several faults.
import binascii

import _rt

PROTOCOL_TLS_CLIENT = 0
PROTOCOL_TLS_SERVER = 1
CERT_NONE = 0
CERT_OPTIONAL = 1
CERT_REQUIRED = 2
MBEDTLS_VERSION = "Mbed TLS 3.6.2 (board harness: the TLS runs in the host)"

_FATAL_ALERT = -30592  # MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE
_NO_CA = -30336  # MBEDTLS_ERR_SSL_CA_CHAIN_REQUIRED


class SSLContext:
    def __init__(self, protocol):
        if protocol != PROTOCOL_TLS_CLIENT:
            raise NotImplementedError("the board harness has TLS clients only")
        self.verify_mode = CERT_NONE
        self._cas = []

    def load_verify_locations(self, cafile=None, cadata=None):
        if cafile:
            with open(cafile, "rb") as f:
                cadata = f.read()
        if isinstance(cadata, str):
            cadata = cadata.encode()
        h = binascii.hexlify(bytes(cadata)).decode()
        if _rt.call("tlsca", h) != 0:
            raise ValueError("invalid cert")
        self._cas.append(h)

    def wrap_socket(
        self, sock, server_side=False, do_handshake_on_connect=True, server_hostname=None
    ):
        if server_side:
            raise NotImplementedError("the board harness has TLS clients only")
        verify = self.verify_mode == CERT_REQUIRED
        if verify and server_hostname is None:
            raise ValueError("CERT_REQUIRED requires server_hostname")
        return SSLSocket(sock, self._cas, server_hostname, verify, do_handshake_on_connect)


class SSLSocket:
    def __init__(self, sock, cas, host, verify, handshake):
        self._sock = sock
        self._err = None  # the exception every call raises once the session failed
        self._done = False
        self._verify = verify
        if verify and not cas:
            self._err = OSError(_NO_CA)  # mbedTLS fails the handshake: no CA chain
        else:
            rtc = int(_rt.rtc_now()) if verify else 0  # mbedTLS reads the RTC for the dates
            err = _rt.call("stls", sock._id, ",".join(cas), host or "", rtc)
            if err:
                raise OSError(err)
        if handshake:
            self._handshake(True)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    # -- the handshake, in the host ------------------------------------------------------
    def _info(self):
        return _rt.call("stlsinfo", self._sock._id)

    def _fail(self, e):
        # As rp2: the session is freed and lets go of the TCP socket, which stays open until
        # its owner closes it; every later call raises e again.
        self._err = e
        self._sock = None
        raise e

    def _handshake(self, block):
        # True once the session is up; False (non-blocking) while a step is pending. Blocking,
        # the socket's timeout bounds the whole handshake here (on rp2: each of mbedTLS's
        # reads) and a non-blocking socket waits without one (rp2 loops until it is done).
        if self._err is not None:
            raise self._err
        s = self._sock
        if s is None:
            raise OSError(_rt.EBADF)
        if self._done:
            return True
        end = None if s._t <= 0 else _rt.now_ms() + s._t
        while True:
            i = self._info()
            if i[0] == 1:
                break
            if i[0] < 0:
                if i[1]:
                    self._fail(ValueError("\n" + i[1] + "\n"))
                self._fail(OSError(i[2] if i[2] else _FATAL_ALERT))
            if not block:
                return False
            left = -1 if end is None else end - _rt.now_ms()
            if end is not None and left <= 0:
                self._fail(OSError(_rt.ETIMEDOUT))
            ms = _rt.until_timer(left)
            if ms < 0 or ms > 1000:
                ms = 1000
            _rt.call("swait", s._id, "hs", ms)
            _rt.run_timers()
        # rp2's mbedTLS checks the dates against the RTC, not against the host's clock
        now = _rt.rtc_now()
        if now < i[4]:
            self._fail(ValueError("\nThe certificate validity starts in the future\n"))
        if now > i[5]:
            self._fail(ValueError("\nThe certificate validity has expired\n"))
        self._done = True
        return True

    def _ready(self):
        # The session is up (a blocking socket waits for it); False: non-blocking, not yet.
        s = self._sock
        return self._handshake(s is not None and s._t != 0)

    # -- stream methods --------------------------------------------------------------------
    def _rx(self, n):
        # Plaintext: what the host has (up to n), b"" at a clean end, None when
        # non-blocking with nothing there; blocking waits with the socket's timeout.
        if not self._ready():
            return None
        try:
            return self._sock._rx(n)
        except OSError as e:
            if e.errno == _rt.EAGAIN:
                return None
            self._fail(e)

    def read(self, n=-1):
        if n is None or n < 0:
            n = 1 << 30
        out = bytearray()
        while len(out) < n:
            b = self._rx(min(n - len(out), 4096))
            if b is None:
                if not out:
                    return None
                break
            if not b:
                break
            out += b
        return bytes(out)

    def readinto(self, buf, nbytes=None):
        mv = memoryview(buf)
        n = len(mv) if nbytes is None else min(nbytes, len(mv))
        b = self.read(n)
        if b is None:
            return None
        mv[: len(b)] = b
        return len(b)

    def readline(self, limit=-1):
        out = bytearray()
        while limit < 0 or len(out) < limit:
            b = self._rx(1)
            if not b:
                break
            out += b
            if b == b"\n":
                break
        return bytes(out)

    def write(self, buf, n=None):
        mv = memoryview(buf)
        if n is not None:
            mv = mv[:n]
        if not len(mv):
            return 0
        if not self._ready():
            return None
        try:
            return self._sock.write(mv)
        except OSError as e:
            self._fail(e)

    def setblocking(self, flag):
        if self._sock is not None:
            self._sock.setblocking(flag)

    def cipher(self):
        i = self._info()
        return (i[6], i[7])

    def getpeercert(self, binary_form=False):
        raise NotImplementedError("the board harness keeps no peer certificate")

    def close(self):
        s = self._sock
        self._sock = None
        if s is not None:
            s.close()
