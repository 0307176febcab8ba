# machine for the unit cases (tests/firmware/mp/case_*.py): records what the firmware asks of
# the hardware so a case can look, and lets it fire timers by hand. The board harness
# (picofleet/sim/board) has the stand-in that runs the whole firmware in real time.


class Reset(Exception):
    # machine.reset(): the case catches it where the board would restart
    pass


log = []  # ("pin", id, v), ("feed",), ("wdt", ms), ("reset",)
timers = []  # every Timer made, deinit or not
levels = {}  # pin id -> level
adc_values = {}  # ADC channel -> read_u16()
wdt = None


def reset():
    log.append(("reset",))
    raise Reset()


def unique_id():
    return b"\xe6\x61\x41\x04\x03\x2a\x5b\x21"


def disable_irq():
    return 1


def enable_irq(state=1):
    pass


class Pin:
    IN = 0
    OUT = 1
    ALT = 3
    PULL_UP = 1
    PULL_DOWN = 2

    def __init__(self, id, mode=-1, pull=-1, value=None, alt=-1):
        self.id = id
        if value is not None:
            self.value(value)

    def value(self, v=None):
        if v is None:
            return levels.get(self.id, 0)
        levels[self.id] = 1 if v else 0
        log.append(("pin", self.id, levels[self.id]))


class ADC:
    CORE_TEMP = 4

    def __init__(self, src):
        self.ch = src.id if isinstance(src, Pin) else src

    def read_u16(self):
        return adc_values.get(self.ch, 30000)


class Timer:
    ONE_SHOT = 0
    PERIODIC = 1

    def __init__(self, id=-1, mode=PERIODIC, period=-1, callback=None):
        self.mode = mode
        self.period = period
        self.callback = callback
        self.active = True
        timers.append(self)

    def deinit(self):
        self.active = False

    def fire(self):
        assert self.active
        if self.mode == Timer.ONE_SHOT:
            self.active = False
        self.callback(self)


def active_timers():
    return [t for t in timers if t.active]


class WDT:
    def __init__(self, id=0, timeout=5000):
        global wdt
        if wdt is None:
            log.append(("wdt", timeout))
            wdt = self
        self.timeout = timeout

    def feed(self):
        log.append(("feed",))


class RTC:
    def datetime(self, t=None):
        return (2026, 1, 1, 4, 0, 0, 0, 0) if t is None else None


def clear():
    global wdt
    del log[:]
    del timers[:]
    wdt = None
    levels.clear()
