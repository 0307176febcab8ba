# One MQTT session over umqtt.simple (installed on the board with
# `mip.install("umqtt.simple")`; picofleet.sim.firmware provides the same API on CPython).
# umqtt.simple opens its socket without a timeout and sets it back to blocking-forever
# after every poll; it finds sockets through its module global `socket`, so the session
# hands it a stand-in whose sockets keep a timeout instead: no call outlives the watchdog.
import socket

from umqtt import simple

_OFFLINE = b'{"state":"offline"}'


class MqttError(Exception):
    pass


class _Sock:
    def __init__(self, s, timeout):
        self._s = s
        self._t = timeout
        s.settimeout(timeout)

    def setblocking(self, flag):
        self._s.settimeout(self._t if flag else 0)

    def connect(self, addr):
        self._s.connect(addr)

    def read(self, n):
        return self._s.read(n)

    def write(self, buf, n=None):
        return self._s.write(buf) if n is None else self._s.write(buf, n)

    def close(self):
        self._s.close()


class _Sockets:
    def __init__(self, timeout):
        self._t = timeout

    def socket(self, *args):
        return _Sock(socket.socket(*args), self._t)

    def getaddrinfo(self, host, port, *args):
        return socket.getaddrinfo(host, port, *args)


class Session:
    def __init__(self, cfg, status_topic, on_message, keepalive, timeout):
        b = cfg["broker"]
        simple.socket = _Sockets(timeout)
        key = cfg["device_key"]
        c = simple.MQTTClient(key, b["host"], b["port"], key, cfg["mqtt_password"], keepalive)
        c.set_last_will(status_topic, _OFFLINE, retain=True, qos=1)
        c.set_callback(on_message)
        self._c = c
        self._half_ms = keepalive * 500
        self._sent = 0

    def _call(self, fn, *args):
        # umqtt reports a refused CONNACK as MQTTException and a broken reply as an
        # AssertionError or a failed index into a short read; all of them end the session.
        try:
            return fn(*args)
        except simple.MQTTException as e:
            raise MqttError("broker refused: %r" % (e,))
        except (AssertionError, IndexError, TypeError) as e:
            raise MqttError("protocol: %r" % (e,))

    def connect(self, now):
        self._call(self._c.connect)
        self._sent = now

    def subscribe(self, topic):
        self._call(self._c.subscribe, topic, 1)

    def publish(self, topic, payload, now, retain=False):
        # Returns once the broker acknowledged (QoS 1); raises OSError or MqttError.
        self._call(self._c.publish, topic, payload, retain, 1)
        self._sent = now

    def poll(self):
        # Handle whatever arrived (the callback runs in here); never waits.
        self._call(self._c.check_msg)

    def keepalive(self, now):
        if now - self._sent >= self._half_ms:
            self._call(self._c.ping)
            self._sent = now

    def close(self):
        # Just drop the socket: no DISCONNECT, so the broker publishes the last will
        # ("offline") until the next session says otherwise.
        s = self._c.sock
        self._c.sock = None
        if s is not None:
            try:
                s.close()
            except OSError:
                pass
