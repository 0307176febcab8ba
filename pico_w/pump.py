# The pump's safety rules as a state machine. Pure: every input carries `now`, a monotonic
# time in ms, and the caller drives the relay from `on` after each call. The rules:
#   - a run never lasts longer than max_run_s (fixed when it starts; a lower limit set
#     during the run shortens it, a higher one never extends it);
#   - after a run stops, for whatever reason, the pump rests for cooldown_s;
#   - below auto_below_pct it waters by itself for auto_run_s (0 switches that off);
#   - a command asks for 1..max_run_s seconds; anything else is refused with a code;
#   - any fault (sensor, caller's error) stops it at once.
# hw.Board arms a hardware timer on every start as a backstop for a stalled loop.


class PumpError(Exception):
    # args: (code, detail); code is what the command's ack reports.
    pass


class Pump:
    def __init__(self, limits):
        self.on = False
        self.reason = None  # "auto" or "cmd" while on
        self.fault = None  # last fault text
        self._started = 0
        self._counted = 0  # how far the current run is already in the counters
        self._deadline = 0
        self._run_max = 0  # the limit of the current run, fixed at its start
        self._stopped = None  # time of the last stop; None: never ran
        self._starts = 0
        self._run_ms = 0
        self._max_ms = 0
        self._cool_ms = 0
        self._auto_pct = 0
        self._auto_ms = 0
        self.set_limits(limits, None)

    def set_limits(self, limits, now):
        self._max_ms = int(limits["max_run_s"] * 1000)
        self._cool_ms = int(limits["cooldown_s"] * 1000)
        self._auto_pct = limits["auto_below_pct"] or 0
        self._auto_ms = int(limits["auto_run_s"] * 1000)
        if self.on and self._run_max > self._max_ms:
            self._run_max = self._max_ms
            self._deadline = min(self._deadline, self._started + self._max_ms)
        if now is not None:
            self.tick(now)

    def tick(self, now):
        if self.on and now >= self._deadline:
            self._stop(now)

    def remaining_ms(self, now):
        # How long the current run may still last (0 when off).
        return max(0, self._deadline - now) if self.on else 0

    def cooldown_ms(self, now):
        if self._stopped is None or self.on:
            return 0
        return max(0, self._stopped + self._cool_ms - now)

    def start(self, seconds, now, reason="cmd"):
        self.tick(now)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise PumpError("bad_args", "seconds must be a number")
        # compared before any conversion, so NaN and infinities are refused too
        if not 1 <= seconds <= self._max_ms / 1000:
            raise PumpError("out_of_bounds", "seconds must be 1..%d" % (self._max_ms // 1000))
        ms = int(seconds * 1000)
        if self.on:
            # A new request moves the end, never past the limit of the run already going.
            self._deadline = min(now + ms, self._started + self._run_max)
            self.reason = reason
            return
        wait = self.cooldown_ms(now)
        if wait:
            raise PumpError("cooldown", "pump rests for another %d s" % ((wait + 999) // 1000))
        self.on = True
        self.reason = reason
        self._started = now
        self._counted = now
        self._run_max = self._max_ms
        self._deadline = now + ms
        self._starts += 1

    def stop(self, now):
        self.tick(now)
        if self.on:
            self._stop(now)

    def error(self, now, text):
        # Anything that went wrong around the pump: off first, then remember why.
        self.fault = text
        self.stop(now)

    def moisture(self, pct, now):
        # One soil reading; None is a sensor fault.
        self.tick(now)
        if pct is None:
            self.error(now, "moisture sensor fault")
            return
        if self.on or not self._auto_pct or pct >= self._auto_pct:
            return
        if self.cooldown_ms(now):
            return
        self.start(self._auto_ms // 1000 or 1, now, "auto")

    def take(self, now):
        # (run seconds, starts) since the previous call: the per-reading counters.
        self.tick(now)
        ms = self._run_ms
        if self.on:
            ms += now - self._counted
            self._counted = now
        starts = self._starts
        self._run_ms = 0
        self._starts = 0
        return ms / 1000, starts

    def _stop(self, now):
        self._run_ms += max(0, min(now, self._deadline) - self._counted)
        self.on = False
        self.reason = None
        self._stopped = now
