# machine stand-in (harness): the RP2040's peripherals a Pico W firmware uses. Pin writes,
# ADC reads, the watchdog and resets go to the host, which records them and owns the board's
# fate: a WDT not fed within its timeout resets the interpreter (boot.py again, flash kept),
# whatever Python is doing at the time.
import _rt

PWRON_RESET = 1
WDT_RESET = 3
_ADC_PINS = {26: 0, 27: 1, 28: 2, 29: 3}


def unique_id():
    return bytes.fromhex(_rt.call("uid"))


def reset():
    _rt.call("reset", "machine.reset")


def soft_reset():
    _rt.call("reset", "soft_reset")


def reset_cause():
    return _rt.call("cause")


def freq(hz=None):
    return 125000000 if hz is None else None


def idle():
    _rt.run_timers()


def lightsleep(ms=None):
    _rt.block(ms or 0)


deepsleep = lightsleep


def disable_irq():
    return 1


def enable_irq(state=1):
    pass


def bootloader():
    _rt.call("reset", "bootloader")


class Pin:
    IN = 0
    OUT = 1
    OPEN_DRAIN = 2
    ALT = 3
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_FALLING = 4
    IRQ_RISING = 8
    _levels = {}

    def __init__(self, id, mode=-1, pull=-1, *, value=None, alt=-1):
        if isinstance(id, str):
            id = {"LED": 64}.get(id, 64)
        self._id = id
        self._mode = 0
        self.init(mode, pull, value=value, alt=alt)

    def init(self, mode=-1, pull=-1, *, value=None, alt=-1):
        if mode != -1:
            self._mode = mode
        if value is not None:
            self.value(value)

    def value(self, v=None):
        if v is None:
            return Pin._levels.get(self._id, 0)
        v = 1 if v else 0
        if Pin._levels.get(self._id) != v:
            Pin._levels[self._id] = v
            _rt.call("pin", self._id, v)

    def __call__(self, v=None):
        return self.value(v)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def high(self):
        self.value(1)

    def low(self):
        self.value(0)

    def toggle(self):
        self.value(1 - self.value())

    def irq(self, handler=None, trigger=12, hard=False):
        return None


class ADC:
    CORE_TEMP = 4

    def __init__(self, src):
        if isinstance(src, Pin):
            src = _ADC_PINS.get(src._id, src._id)
        elif src in _ADC_PINS:
            src = _ADC_PINS[src]
        self._ch = src

    def read_u16(self):
        return _rt.call("adc", self._ch)


class WDT:
    def __init__(self, id=0, timeout=5000):
        if not 1 <= timeout <= 8388:
            raise ValueError("timeout")
        _rt.call("wdt", timeout)

    def feed(self):
        _rt.call("feed")


class Timer:
    ONE_SHOT = 0
    PERIODIC = 1

    def __init__(self, id=-1, **kw):
        self._cb = None
        self._period = 0
        if kw:
            self.init(**kw)

    def init(self, *, mode=1, period=-1, freq=-1, tick_hz=1000, callback=None):
        if freq > 0:
            ms = int(1000 / freq)
        else:
            ms = int(period * 1000 / tick_hz)
        self._cb = callback
        self._period = ms if mode == Timer.PERIODIC else 0
        _rt.timer_add(_rt.now_ms() + ms, self)

    def deinit(self):
        _rt.timer_remove(self)


class RTC:
    def datetime(self, dt=None):
        import time

        if dt is None:
            t = time.gmtime()
            return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0)
        _rt.rtc_set(time.mktime((dt[0], dt[1], dt[2], dt[4], dt[5], dt[6], 0, 0)))


def mem32(*a):
    raise NotImplementedError("mem32")
