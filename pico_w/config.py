# config.json: read, check and save the device's settings (written by `picofleet usb flash`).
# Every problem becomes one ConfigError whose text is what the REPL shows; the app then idles
# with the relay off instead of guessing. Remote `config` commands go through update(), which
# only touches the keys in REMOTE and applies the same bounds as the file.
import json
import sys

PATH = "config.json"

# (section or None, key): (low, high) for every number a config may carry.
BOUNDS = {
    ("pump", "max_run_s"): (1, 3600),
    ("pump", "cooldown_s"): (0, 86400),
    ("pump", "auto_below_pct"): (0, 100),
    ("pump", "auto_run_s"): (1, 3600),
    ("calibration", "moisture_dry"): (0, 65535),
    ("calibration", "moisture_wet"): (0, 65535),
    (None, "telemetry_interval_s"): (1, 86400),
    (None, "ota_trial_s"): (30, 3600),
}
# What a `config` command may change; the rest (network, keys) changes only over USB.
REMOTE = {
    "pump": ("max_run_s", "cooldown_s", "auto_below_pct", "auto_run_s"),
    "calibration": ("moisture_dry", "moisture_wet"),
    None: ("telemetry_interval_s",),
}

_DEFAULT_PUMP = {"max_run_s": 30, "cooldown_s": 300, "auto_below_pct": 25, "auto_run_s": 10}
_DEFAULT_CAL = {"moisture_dry": 52000, "moisture_wet": 21000}
_DEFAULT_PINS = {"relay": 15, "relay_active_high": True, "moisture_adc": 26}
_KEYS = (
    "device_key", "mqtt_password", "provision_secret", "provision_key", "wifi", "broker",
    "hub_http", "prefix", "device_type", "channel", "ota_pubkey", "ota_key_id", "calibration",
    "pump", "telemetry_interval_s", "sensors", "pins", "ntp_host", "ota_trial_s", "ca_pem",
)
_KEY_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
_HEX = "0123456789abcdef"
_PEM_BEGIN = "-----BEGIN CERTIFICATE-----"
_PEM_END = "-----END CERTIFICATE-----"


class ConfigError(Exception):
    pass


def _fail(text):
    raise ConfigError(text)


def _str(doc, key, required=True, empty=False):
    v = doc.get(key)
    if v is None:
        if required:
            _fail("'%s' is missing" % key)
        return None
    if not isinstance(v, str) or (not v and not empty):
        _fail("'%s' must be a non-empty string" % key)
    return v


def _num(doc, section, key, default):
    v = doc.get(key, default)
    if v is None and section == "pump" and key == "auto_below_pct":
        return 0  # null switches automatic watering off
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        _fail("'%s' must be a number" % _name(section, key))
    lo, hi = BOUNDS[(section, key)]
    if not lo <= v <= hi:
        _fail("'%s' must be within %s..%s" % (_name(section, key), lo, hi))
    return v


def _name(section, key):
    return key if section is None else section + "." + key


def _section(doc, name, default):
    v = doc.get(name)
    if v is None:
        return dict(default)
    if not isinstance(v, dict):
        _fail("'%s' must be an object" % name)
    return v


def _hex(text, n):
    if len(text) != n or any(c not in _HEX for c in text.lower()):
        return False
    return True


def _device_key(key):
    if not 1 <= len(key) <= 64 or any(c not in _KEY_CHARS for c in key):
        _fail("'device_key' may only hold A-Z a-z 0-9 _ - (1..64 characters)")
    if key in ("hub", "operator"):
        _fail("'device_key' is a reserved name")


def validate(doc):
    # The checked config with defaults filled in; raises ConfigError.
    if not isinstance(doc, dict):
        _fail("config.json must hold a JSON object")
    for k in doc:
        if k not in _KEYS and not k.startswith("_"):
            _fail("unknown key '%s' (a typo?)" % k)
    out = {}
    out["device_key"] = _str(doc, "device_key")
    _device_key(out["device_key"])
    out["mqtt_password"] = _str(doc, "mqtt_password")
    out["provision_secret"] = None  # devices never hold the fleet secret
    pk = _str(doc, "provision_key", required=False)
    if pk is not None and not _hex(pk, 64):
        _fail("'provision_key' must be 64 hex characters")
    out["provision_key"] = pk
    wifi = _section(doc, "wifi", {})
    if not wifi:
        _fail("'wifi' is missing")
    out["wifi"] = {
        "ssid": _str(wifi, "ssid"),
        "password": _str(wifi, "password", required=False, empty=True) or "",
    }
    if wifi.get("country") is not None:
        out["wifi"]["country"] = _str(wifi, "country")
    broker = _section(doc, "broker", {})
    host = _str(broker, "host")
    port = broker.get("port", 1883)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        _fail("'broker.port' must be 1..65535")
    out["broker"] = {"host": host, "port": port}
    hub = _str(doc, "hub_http", required=False)
    if hub is not None and not hub.startswith("http://"):
        _fail("'hub_http' must start with http://")
    out["hub_http"] = hub
    # The hub's CA certificate (PEM): present, the broker is reached over TLS and must show a
    # certificate that chains to it; absent, plain MQTT (a hub without TLS).
    ca = _str(doc, "ca_pem", required=False)
    if ca is not None and _PEM_BEGIN not in ca:
        _fail("'ca_pem' must hold a PEM certificate (-----BEGIN CERTIFICATE-----)")
    out["ca_pem"] = ca
    out["ntp_host"] = _str(doc, "ntp_host", required=False)
    dtype = board_type(getattr(sys.implementation, "_machine", ""))
    for k, default in (("prefix", "picofleet"), ("device_type", dtype), ("channel", "stable")):
        v = doc.get(k)
        out[k] = default if v is None else _str(doc, k)
        if "/" in out[k] or "+" in out[k] or "#" in out[k]:
            _fail("'%s' must be a single topic level" % k)
    key = _str(doc, "ota_pubkey", required=False)
    kid = _str(doc, "ota_key_id", required=False)
    if (key is None) != (kid is None):
        _fail("'ota_pubkey' and 'ota_key_id' come together")
    if kid is not None and not _hex(kid, 16):
        _fail("'ota_key_id' must be 16 hex characters")
    out["ota_pubkey"] = key
    out["ota_key_id"] = kid
    cal = _section(doc, "calibration", _DEFAULT_CAL)
    out["calibration"] = {
        "moisture_dry": _num(cal, "calibration", "moisture_dry", _DEFAULT_CAL["moisture_dry"]),
        "moisture_wet": _num(cal, "calibration", "moisture_wet", _DEFAULT_CAL["moisture_wet"]),
    }
    if out["calibration"]["moisture_dry"] == out["calibration"]["moisture_wet"]:
        _fail("'calibration.moisture_dry' and 'moisture_wet' must differ")
    pump = _section(doc, "pump", _DEFAULT_PUMP)
    p = {}
    for k in ("max_run_s", "cooldown_s", "auto_below_pct", "auto_run_s"):
        p[k] = _num(pump, "pump", k, _DEFAULT_PUMP[k])
    if p["auto_run_s"] > p["max_run_s"]:
        _fail("'pump.auto_run_s' must not exceed 'pump.max_run_s'")
    out["pump"] = p
    out["telemetry_interval_s"] = _num(doc, None, "telemetry_interval_s", 60)
    # how long a new main.py has per trial boot to publish once; null: hw.TRIAL_MS
    trial = doc.get("ota_trial_s")
    out["ota_trial_s"] = None if trial is None else _num(doc, None, "ota_trial_s", None)
    pins = _section(doc, "pins", _DEFAULT_PINS)
    out["pins"] = {}
    for k in ("relay", "moisture_adc"):
        v = pins.get(k, _DEFAULT_PINS[k])
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 29:
            _fail("'pins.%s' must be a GPIO number 0..29" % k)
        out["pins"][k] = v
    high = pins.get("relay_active_high", True)
    if not isinstance(high, bool):
        _fail("'pins.relay_active_high' must be true or false")
    out["pins"]["relay_active_high"] = high
    if doc.get("sensors") is not None:
        out["sensors"] = doc["sensors"]  # the USB Picos' wiring; unused here
    return out


def board_type(machine):
    # The device_type a board is when config.json names none, from its machine string
    # (sys.implementation._machine, e.g. "Raspberry Pi Pico 2 W with RP2350").
    return "pico2_w" if "RP2350" in machine else "pico_w"


def public_key(cfg):
    # The OTA public key as 32 raw bytes (None when OTA is not configured); raises ConfigError
    # when the key does not decode or does not match its id.
    text = cfg.get("ota_pubkey")
    if text is None:
        return None
    import binascii
    import hashlib

    try:
        raw = binascii.a2b_base64(text.encode())
    except Exception:  # ValueError in C builds, plain Exception in the Python binascii
        raw = b""
    if len(raw) != 32:
        _fail("'ota_pubkey' must be a 32-byte Ed25519 key")
    kid = binascii.hexlify(hashlib.sha256(raw).digest()).decode()[:16]
    if kid != cfg["ota_key_id"].lower():
        _fail("'ota_key_id' does not belong to 'ota_pubkey'")
    return raw


def ca_der(cfg):
    # The CA certificates of 'ca_pem' as a list of DER bytes (None without TLS); raises
    # ConfigError when a block does not decode. DER, not PEM: mbedTLS parses it with no
    # base64 pass and no trailing-NUL rule.
    text = cfg.get("ca_pem")
    if text is None:
        return None
    import binascii

    out = []
    i = text.find(_PEM_BEGIN)
    while i >= 0:
        j = text.find(_PEM_END, i)
        if j < 0:
            break
        body = text[i + len(_PEM_BEGIN) : j].replace("\n", "").replace("\r", "")
        try:
            der = binascii.a2b_base64(body.strip().encode())
        except Exception:  # ValueError in C builds, plain Exception in the Python binascii
            der = b""
        if len(der) < 64 or der[0] != 0x30:
            _fail("'ca_pem' holds a certificate that does not decode")
        out.append(der)
        i = text.find(_PEM_BEGIN, j)
    if not out:
        _fail("'ca_pem' holds no complete certificate")
    return out


def load(path=PATH):
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        _fail(path + " is missing: flash one with `picofleet usb flash`")
    try:
        doc = json.loads(text)
    except ValueError:
        _fail(path + " is not valid JSON")
    cfg = validate(doc)
    public_key(cfg)
    ca_der(cfg)
    return cfg


def update(cfg, changes):
    # A new config with `changes` ({"pump": {...}, "calibration": {...},
    # "telemetry_interval_s": n}) applied, or ConfigError naming the first refused key.
    if not isinstance(changes, dict) or not changes:
        _fail("'set' must be a non-empty object")
    new = {}
    for k in cfg:
        v = cfg[k]
        new[k] = dict(v) if isinstance(v, dict) else v
    for k in changes:
        v = changes[k]
        if k in REMOTE and k is not None and isinstance(v, dict):
            for sub in v:
                if sub not in REMOTE[k]:
                    _fail("'%s.%s' cannot be changed remotely" % (k, sub))
                new[k][sub] = v[sub]
        elif k in REMOTE[None]:
            new[k] = v
        else:
            _fail("'%s' cannot be changed remotely" % k)
    return validate(new)


def save(cfg, path=PATH):
    # Write-then-rename: a power cut leaves the old file or the new one, never half of one.
    import os

    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(cfg))
    os.rename(tmp, path)
