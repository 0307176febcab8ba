# main.py for test_harness: rp2 socket semantics against the test's TCP server at PORT.
import os
import socket
import time

import network

PORT = 0  # set by the test


def r(name, value):
    print("R", name, repr(value))


def err(fn):
    try:
        return ("ok", fn())
    except OSError as e:
        return ("OSError", e.errno if isinstance(e.errno, int) else e.args[0])


w = network.WLAN(network.STA_IF)
w.active(True)
w.connect("fleet", "fleet-password")
while not w.isconnected():
    time.sleep_ms(20)
r("literal", socket.getaddrinfo("127.0.0.1", PORT)[0][-1])
r("nxdomain", err(lambda: socket.getaddrinfo("no.such.host.test", 80)))
addr = ("127.0.0.1", PORT)

s = socket.socket()
s.settimeout(2)
s.connect(addr)
s.write(b"line\n")
r("readline", s.readline())
s.settimeout(0)
r("nb_read", s.read(10))
r("nb_readinto", s.readinto(bytearray(4)))
r("nb_recv", err(lambda: s.recv(10)))
s.settimeout(0.3)
r("timeout_read", err(lambda: s.read(10)))
s.write(b"half\n")  # the server answers 3 bytes of it: read(10) times out and loses them
r("partial_lost", err(lambda: s.read(10)))
s.write(b"bye\n")  # the server closes after "bye"
s.settimeout(2)
r("eof_read", s.read(100))
r("eof_recv", s.recv(10))
s.close()
r("closed", err(lambda: s.read(1)))
s = socket.socket()
s.settimeout(2)
r("connect_again", err(lambda: s.connect(addr)))
r("connect_twice", err(lambda: s.connect(addr)))
s.close()
s = socket.socket()
s.settimeout(1)
r("refused", err(lambda: s.connect(("127.0.0.1", 1))))
r("statvfs", os.statvfs("/")[:4])
r("urandom", len(os.urandom(8)))
r("done", 1)
