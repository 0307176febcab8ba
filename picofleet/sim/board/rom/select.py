# rp2's select, extended by the harness: poll() waits in the host instead of the wasm port's
# busy loop, and soft timers run while it waits.
import sys

_path = sys.path
sys.path = []
try:
    from select import *  # noqa: F403  (the built-in module)
    from select import poll as _poll
finally:
    sys.path = _path

import _rt


class _Poll:
    def __init__(self):
        self._p = _poll()
        self._n = 0

    def register(self, obj, mask=None):
        self._p.register(obj) if mask is None else self._p.register(obj, mask)
        self._n += 1

    def unregister(self, obj):
        self._p.unregister(obj)
        self._n -= 1

    def modify(self, obj, mask):
        self._p.modify(obj, mask)

    def poll(self, timeout=-1):
        return list(self.ipoll(timeout))

    def ipoll(self, timeout=-1, flags=0):
        if self._n:
            # streams registered: the built-in poll, in short slices so timers still run
            end = None if timeout < 0 else _rt.now_ms() + timeout
            while True:
                r = self._p.poll(0)
                if r or (end is not None and end - _rt.now_ms() <= 0):
                    return r
                _rt.block(10 if end is None else max(0, min(10, end - _rt.now_ms())))
        if timeout < 0:
            raise OSError(_rt.EAGAIN)  # would wait forever: nothing can wake it here
        _rt.block(timeout)
        return ()


def poll():
    return _Poll()
