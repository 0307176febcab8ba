# The board: the only module that imports machine, network, rp2 and ntptime, so everything
# else also runs on CPython (picofleet.sim.firmware gives these names thin fakes) and in the
# WebAssembly MicroPython the tests use.
#   relay      GPIO out; every start arms a one-shot Timer that drops the relay even if the
#              asyncio loop stalls (the pump state machine normally stops it first)
#   moisture   capacitive probe on an ADC pin (median of 5 reads)
#   internal   RP2040 temperature sensor (ADC 4), VSYS through the Pico W's divider (ADC 3)
#   watchdog   8 s, fed by the app's control task; reset on a hung loop
#   Wi-Fi      station mode with power saving off (keeps MQTT responsive)
#   clock      wrap-free milliseconds since boot; the RTC set from NTP or the hub
import time

import machine
import network

_WDT_MS = 8000  # RP2040 maximum is 8388
_BACKSTOP_MS = 500  # the hardware timer fires this long after the planned end of a run
_UNIX_2000 = 946684800


def arm_watchdog():
    # Once armed the RP2040 watchdog cannot be stopped; arming again returns the same one.
    return machine.WDT(timeout=_WDT_MS)


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
        self._temp = machine.ADC(4)
        self._timer = None
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
        try:
            ntptime.settime()
            return True
        except (OSError, OverflowError):
            return False

    # -- relay ---------------------------------------------------------------------------
    def relay(self, on, max_ms=0):
        if on == self._relay_on:
            return
        if on:
            self._backstop(max_ms + _BACKSTOP_MS)
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
            raw = machine.ADC(3).read_u16()
        finally:
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
