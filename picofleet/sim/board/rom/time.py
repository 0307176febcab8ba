# rp2's time, extended by the harness: time() is whole seconds of the board's RTC (which
# starts at 2021-01-01 on every reset and is set by machine.RTC / ntptime), and the sleeps
# wait in the host (the wasm port busy-waits) while soft timers keep running.
import sys

_path = sys.path
sys.path = []
try:
    from time import *  # noqa: F403  (the built-in module)
    from time import gmtime as _gmtime
    from time import localtime as _localtime
finally:
    sys.path = _path

import _rt


def time():
    return int(_rt.rtc_now())


def time_ns():
    return int(_rt.rtc_now() * 1000) * 1000000


def gmtime(secs=None):
    return _gmtime(time() if secs is None else secs)


def localtime(secs=None):
    return _localtime(time() if secs is None else secs)


def sleep_ms(ms):
    _rt.block(int(ms))


def sleep(s):
    _rt.block(int(s * 1000))


def sleep_us(us):
    _rt.block(int(us) // 1000)
