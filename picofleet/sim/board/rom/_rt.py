# The board's runtime (MicroPython side of the harness, not part of the firmware): the link to
# the host process (`_host`, a JS module whose calls block like rp2's C calls do), the RTC and
# soft timers.
#
# Soft timers run where rp2 runs scheduled callbacks: while the interpreter waits (between
# asyncio iterations, in a blocking socket call or DNS lookup, in time.sleep), not in the
# middle of busy Python code.
import gc

import _host

EBADF = 9
EAGAIN = 11
ENOTCONN = 107
ECONNRESET = 104
EISCONN = 106
EALREADY = 114
EINPROGRESS = 115
ETIMEDOUT = 110
EHOSTUNREACH = 113

_timers = []  # [deadline_ms, timer]
_RTC_BOOT = 1609459200  # an rp2 RTC comes up at 2021-01-01 00:00:00 on every reset
_rtc_offset = 0.0
# highest gc.mem_alloc() seen at a call into the host: an upper bound of the live heap,
# since this build collects garbage only between asyncio iterations
peak = 0


def call(op, a=None, b=None, c=None, d=None):
    global peak
    m = gc.mem_alloc()
    if m > peak:
        peak = m
    return _host.call(op, a, b, c, d)


def now_ms():
    return call("now")


def host_time():
    return call("epoch")


def rtc_boot():
    global _rtc_offset
    _rtc_offset = _RTC_BOOT - host_time()


def rtc_now():
    return host_time() + _rtc_offset


def rtc_set(epoch):
    global _rtc_offset
    _rtc_offset = epoch - host_time()


# -- soft timers -----------------------------------------------------------------------
def timer_add(deadline, t):
    timer_remove(t)
    _timers.append([deadline, t])
    _rearm()


def timer_remove(t):
    for i in range(len(_timers) - 1, -1, -1):
        if _timers[i][1] is t:
            _timers.pop(i)
    _rearm()


def _rearm():
    # the JS event loop calls run_timers() at the next deadline while Python is idle
    call("tarm", until_timer(-1))


def run_timers():
    if _timers:
        now = now_ms()
        for e in [e for e in _timers if e[0] - now <= 0]:
            t = e[1]
            if t._period:
                e[0] += t._period
            else:
                timer_remove(t)
            if t._cb is not None:
                t._cb(t)
    _rearm()


def until_timer(ms):
    # ms capped at the next timer's deadline (ms < 0: no cap of its own)
    if not _timers:
        return ms
    d = min(e[0] for e in _timers) - now_ms()
    if d < 0:
        d = 0
    return d if ms < 0 or d < ms else ms


# -- waiting ---------------------------------------------------------------------------
def block(ms):
    # A blocking wait of ms (time.sleep and friends) in which timers still run.
    end = now_ms() + ms
    while True:
        left = end - now_ms()
        if left <= 0:
            run_timers()
            return
        call("idle", until_timer(left))
        run_timers()


def report_heap(label):
    # called at the top level, right after a collection
    call("heap", label, gc.mem_alloc(), gc.mem_free(), peak)
