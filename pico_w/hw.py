# The board: the only module that imports machine, network, rp2, ntptime (and socket for
# DNS), so everything else runs in the tests' WebAssembly MicroPython with stand-ins for
# hardware only (tests/firmware/mp/stubs, picofleet/sim/board/rom).
#   relay      GPIO out; every start arms a one-shot Timer that drops the relay even if the
#              asyncio loop stalls (the pump state machine normally stops it first)
#   moisture   capacitive probe on an ADC pin (median of 5 reads)
#   internal   the core's temperature sensor (ADC.CORE_TEMP), VSYS through the divider on
#              GPIO29 (the same on the Pico W's RP2040 and the Pico 2 W's RP2350)
#   watchdog   8 s (both chips allow it), fed by the app only while all its tasks make
#              progress; reset on a hung loop
#   trial      on a trial boot of a new main.py, a deadline: no confirmed publish within
#              TRIAL_MS resets the board, so boot.py counts the boot and rolls back in the end
#   DNS        getaddrinfo has no timeout on rp2: literal addresses skip it, a name lookup
#              runs with the watchdog held for at most DNS_MS (then it resets the board)
#   Wi-Fi      station mode with power saving off (keeps MQTT responsive)
#   clock      wrap-free milliseconds since boot; the RTC set from NTP or the hub
import time

import machine
import network

_WDT_MS = 8000  # RP2040 maximum is 8388, RP2350's 16777
_BACKSTOP_MS = 500  # the hardware timer fires this long after the planned end of a run
_REARM_MS = 100  # a planned end that moves by more re-arms the backstop
_HOLD_FEED_MS = 1000
DNS_MS = 20000  # lwIP gives up on a lookup by itself in about that time
TRIAL_MS = 600000  # a new main.py has 10 minutes per boot to publish once
_UNIX_2000 = 946684800
_trial = None


def arm_watchdog():
    # Once armed the watchdog cannot be stopped; arming again returns the same one.
    return machine.WDT(timeout=_WDT_MS)


def _trial_expired(_t):
    print("boot: trial main.py did not publish in time, resetting")
    machine.reset()


def arm_trial(ms=None):
    # boot.py, on a trial boot: reset within ms (default TRIAL_MS) unless trial_passed().
    global _trial
    trial_passed()
    _trial = machine.Timer(
        mode=machine.Timer.ONE_SHOT, period=ms or TRIAL_MS, callback=_trial_expired
    )


def trial_passed():
    global _trial
    if _trial is not None:
        _trial.deinit()
        _trial = None


def _ipv4(host):
    parts = host.split(".")
    return len(parts) == 4 and all(p.isdigit() and int(p) < 256 for p in parts)


def _epoch_offset():
    # Ports whose epoch is 2000 (older rp2 builds) need this added to get Unix time.
    return _UNIX_2000 if time.gmtime(0)[0] == 2000 else 0


class Board:
    def __init__(self, pins=None):
        p = pins or {}
        self._high = p.get("relay_active_high", True)
        self._relay = machine.Pin(p.get("relay", 15), machine.Pin.OUT, value=not self._high)
        self._relay_on = False
        self._moist = machine.ADC(machine.Pin(p.get("moisture_adc", 26)))
        self._temp = machine.ADC(machine.ADC.CORE_TEMP)
        self._timer = None
        self._end = 0  # planned end of the run the backstop is armed for
        self._holder = None
        self._wdt = None
        self._wlan = None
        self._last = time.ticks_ms()
        self._ms = 0
        self._epoch0 = _epoch_offset()

    # -- time ----------------------------------------------------------------------------
    def ms(self):
        # Milliseconds since boot without the 2**30 wrap of ticks_ms (call at least daily).
        now = time.ticks_ms()
        self._ms += time.ticks_diff(now, self._last)
        self._last = now
        return self._ms

    def epoch(self):
        return time.time() + self._epoch0

    def set_time(self, epoch):
        t = time.gmtime(epoch - self._epoch0)
        machine.RTC().datetime((t[0], t[1], t[2], t[6] + 1, t[3], t[4], t[5], 0))

    def ntp(self, host):
        # True when the RTC was set from NTP.
        import ntptime

        if host:
            ntptime.host = host
        ntptime.timeout = 2
        self.hold(DNS_MS)  # settime() looks the host up with getaddrinfo first
        try:
            ntptime.settime()
            return True
        except (OSError, OverflowError):
            return False
        finally:
            self.release()

    # -- relay ---------------------------------------------------------------------------
    def relay(self, on, max_ms=0):
        # on: the run may last max_ms more. The backstop follows the planned end: a run
        # extended by a second command must not be cut at the end of the first, and one
        # shortened by a lower limit must not outlive it.
        if on:
            end = self.ms() + max_ms
            if self._relay_on and abs(end - self._end) <= _REARM_MS:
                return
            self._backstop(max_ms + _BACKSTOP_MS)
            self._end = end
        elif not self._relay_on:
            return
        elif self._timer is not None:
            self._timer.deinit()
            self._timer = None
        self._relay.value(1 if on == self._high else 0)
        self._relay_on = on

    def _backstop(self, ms):
        if self._timer is not None:
            self._timer.deinit()
        pin = self._relay
        off = 0 if self._high else 1

        def _drop(_t):
            pin.value(off)

        self._timer = machine.Timer(mode=machine.Timer.ONE_SHOT, period=ms, callback=_drop)

    def relay_is_on(self):
        return self._relay.value() == (1 if self._high else 0)

    # -- sensors -------------------------------------------------------------------------
    def moisture_raw(self):
        r = sorted([self._moist.read_u16() for _ in range(5)])
        return r[2]

    def temperature_c(self):
        v = self._temp.read_u16() * 3.3 / 65535
        return 27 - (v - 0.706) / 0.001721

    def supply_v(self):
        # VSYS/3 sits on GPIO29, which the Pico W shares with the Wi-Fi chip's SPI clock:
        # deselect the chip (GPIO25 high), read, then hand the pin back to the driver.
        state = machine.disable_irq()
        try:
            machine.Pin(25, machine.Pin.OUT, value=1)
            machine.Pin(29, machine.Pin.IN, pull=None)
            raw = machine.ADC(machine.Pin(29)).read_u16()
        finally:
            # alt 7 is PIO1, where the CYW43 driver runs its SPI on both chips
            machine.Pin(29, machine.Pin.ALT, pull=machine.Pin.PULL_DOWN, alt=7)
            machine.enable_irq(state)
        return raw * 3 * 3.3 / 65535

    def unique_id(self):
        import binascii

        return binascii.hexlify(machine.unique_id()).decode().upper()

    def random_hex(self, n):
        import binascii
        import os

        return binascii.hexlify(os.urandom(n)).decode()

    # -- watchdog and reset --------------------------------------------------------------
    def watchdog(self):
        if self._wdt is None:
            self._wdt = arm_watchdog()
        self._wdt.feed()

    def feed(self):
        if self._wdt is not None:
            self._wdt.feed()

    def trial_passed(self):
        trial_passed()

    def resolve(self, host, port, limit_ms=DNS_MS):
        # (ip, port) to connect to. getaddrinfo cannot be given a timeout on rp2, so a
        # soft timer feeds the watchdog while it waits, for limit_ms at most: a lookup that
        # hangs longer resets the board like any other hung call.
        if _ipv4(host):
            return (host, port)
        import socket

        self.hold(limit_ms)
        try:
            return socket.getaddrinfo(host, port)[0][-1]
        finally:
            self.release()

    def hold(self, limit_ms):
        self.release()
        wdt = self._wdt
        if wdt is None:
            return
        wdt.feed()
        end = time.ticks_add(time.ticks_ms(), limit_ms)

        def _feed(t):
            if time.ticks_diff(end, time.ticks_ms()) > 0:
                wdt.feed()

        self._holder = machine.Timer(
            mode=machine.Timer.PERIODIC, period=_HOLD_FEED_MS, callback=_feed
        )

    def release(self):
        if self._holder is not None:
            self._holder.deinit()
            self._holder = None

    def reset(self):
        self.relay(False)
        machine.reset()

    # -- Wi-Fi ---------------------------------------------------------------------------
    def _sta(self):
        if self._wlan is None:
            self._wlan = network.WLAN(network.STA_IF)
        return self._wlan

    def wifi_connect(self, ssid, password, country=None):
        if country:
            import rp2

            rp2.country(country)
        w = self._sta()
        w.active(True)
        w.config(pm=network.WLAN.PM_NONE)
        w.connect(ssid, password)

    def wifi_status(self):
        # network.STAT_*: 3 = got IP, 1 = connecting, negative = failed.
        return self._sta().status()

    def wifi_up(self):
        return self._wlan is not None and self._wlan.isconnected()

    def wifi_down(self):
        if self._wlan is not None:
            self._wlan.disconnect()

    def rssi(self):
        try:
            return self._sta().status("rssi")
        except (OSError, ValueError):
            return None
