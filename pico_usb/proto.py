# Wire format of a USB Pico: what it writes to and reads from USB serial.
# Pure (no machine, no I/O): it runs on the board, in real MicroPython under the tests, and
# under CPython where the gateway's tests import it.
#
#   out  {"id":"E661...","seq":7,"fw":"1.0.0","readings":[{"type":..,"value":..},..]}
#   out  {"hello":1,"id":"E661...","fw":"1.0.0","sensors":["temperature_c",..],"dht":"dht22"}
#   in   hello | read      (one word a line; anything else gets {"error":..})
from micropython import const
import json

FW_VERSION = "1.0.0"
SENSORS = ("temperature_c", "humidity_pct", "soil_moisture_pct")

_MAX_LINE = const(64)  # longest command we accept; longer input is dropped, not buffered
_DRY = const(52000)  # raw ADC counts in dry air / in water, from the fleet's default sensor
_WET = const(21000)


def moisture_pct(raw, dry, wet):
    # Linear between the calibration points, clamped: 0 % at `dry`, 100 % at `wet`.
    if dry == wet:
        return None
    pct = (dry - raw) * 100.0 / (dry - wet)
    if pct < 0:
        pct = 0.0
    elif pct > 100:
        pct = 100.0
    return round(pct, 1)


def settings(cfg):
    # The fields of config.json this app uses, with defaults; cfg may be {} or partial.
    cal = cfg.get("calibration") or {}
    sen = cfg.get("sensors") or {}
    every = cfg.get("telemetry_interval_s") or 60
    return {
        "interval_s": every if every >= 2 else 2,  # a DHT22 needs 2 s between reads
        "dry": cal.get("moisture_dry", _DRY),
        "wet": cal.get("moisture_wet", _WET),
        "dht": sen.get("dht", "dht22"),
        "dht_pin": sen.get("dht_pin", 15),
        "adc_pin": sen.get("moisture_adc_pin", 26),
    }


def reading_line(uid, seq, temp, humi, moist):
    # One JSON line per reading set; a sensor that failed is left out, never sent as null.
    readings = []
    if temp is not None:
        readings.append({"type": "temperature_c", "value": round(temp, 1)})
    if humi is not None:
        readings.append({"type": "humidity_pct", "value": round(humi, 1)})
    if moist is not None:
        readings.append({"type": "soil_moisture_pct", "value": moist})
    if not readings:
        return None
    return json.dumps({"id": uid, "seq": seq, "fw": FW_VERSION, "readings": readings})


def hello_line(uid, dht):
    return json.dumps(
        {"hello": 1, "id": uid, "fw": FW_VERSION, "sensors": list(SENSORS), "dht": dht}
    )


class LineBuffer:
    # Collects characters into command lines without growing past _MAX_LINE.
    def __init__(self):
        self._buf = bytearray(_MAX_LINE)
        self._n = 0
        self._over = False
        self.dropped = 0

    def feed(self, ch):
        # ch: a 1-character str (sys.stdin.read(1)); returns a complete line or None.
        if ch == "\n" or ch == "\r":
            if self._over:
                self._over = False
                self._n = 0
                self.dropped += 1
                return None
            if self._n == 0:
                return None
            line = bytes(self._buf[: self._n]).decode()
            self._n = 0
            return line
        if self._over:
            return None
        code = ord(ch)
        if code < 32 or code > 126 or self._n >= _MAX_LINE:
            self._over = True  # binary noise or an overlong line: drop up to the next newline
            return None
        self._buf[self._n] = code
        self._n += 1
        return None
