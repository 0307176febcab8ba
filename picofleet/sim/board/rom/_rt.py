# The board's runtime (MicroPython side of the harness, not part of the firmware): the link to
# the host process (`_host`, a JS module whose calls block like rp2's C calls do), the RTC,
# soft timers and the idle wait that asyncio's poller ends in.
#
# Soft timers run where rp2 runs scheduled callbacks: while the interpreter waits (asyncio
# idle, a blocking socket call, time.sleep), not in the middle of busy Python code.
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
_started = False


def call(op, a=None, b=None, c=None, d=None):
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


def timer_remove(t):
    for i in range(len(_timers) - 1, -1, -1):
        if _timers[i][1] is t:
            _timers.pop(i)


def run_timers():
    if not _timers:
        return
    now = now_ms()
    due = [e for e in _timers if e[0] - now <= 0]
    for e in due:
        t = e[1]
        if t._period:
            e[0] += t._period
        else:
            timer_remove(t)
        cb = t._cb
        if cb is not None:
            cb(t)


def until_timer(ms):
    # ms capped at the next timer's deadline (ms < 0: wait forever)
    if not _timers:
        return ms
    now = now_ms()
    d = min(e[0] for e in _timers) - now
    if d < 0:
        d = 0
    return d if ms < 0 or d < ms else ms


# -- waiting ---------------------------------------------------------------------------
def block(ms):
    # A blocking wait of ms that still lets timers and host requests through.
    end = now_ms() + ms
    while True:
        left = end - now_ms()
        if left <= 0:
            run_timers()
            return
        idle_once(until_timer(left))


def idle_once(ms):
    # Sleep up to ms (host wakes us early when it wants something); run due timers.
    want = call("idle", ms)
    if want:
        serve(want)
    run_timers()


def serve(want):
    for w in want.split("\n"):
        if w.startswith("heap:"):
            gc.collect()
            call("heap", w[5:], gc.mem_alloc(), gc.mem_free())
