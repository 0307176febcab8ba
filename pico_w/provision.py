# The startup message, current token form: HMAC-SHA256 under the device's own provisioning
# key (config.json "provision_key", derived by the hub from the fleet secret) over
# "serial|timestamp|nonce". The hub accepts a timestamp within its window widened by the
# clock drift the device declares, and each nonce once.
import binascii
import hashlib
import json

_BLOCK = 64


def hmac_sha256(key, msg):
    # RFC 2104; the rp2 port has no hmac module, only hashlib.sha256.
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    inner = bytearray(_BLOCK)
    outer = bytearray(_BLOCK)
    for i in range(_BLOCK):
        k = key[i] if i < len(key) else 0
        inner[i] = k ^ 0x36
        outer[i] = k ^ 0x5C
    h = hashlib.sha256(inner)
    h.update(msg)
    o = hashlib.sha256(outer)
    o.update(h.digest())
    return o.digest()


def token(provision_key_hex, serial, ts, nonce):
    key = binascii.unhexlify(provision_key_hex)
    msg = ("%s|%d|%s" % (serial, ts, nonce)).encode()
    return binascii.hexlify(hmac_sha256(key, msg)).decode()


def startup(cfg, version, ts, nonce, drift_s):
    serial = cfg["device_key"]
    return json.dumps(
        {
            "event_type": "device_startup",
            "serial": serial,
            "provision_token": token(cfg["provision_key"], serial, ts, nonce),
            "firmware": version,
            "device_type": cfg["device_type"],
            "timestamp": ts,
            "nonce": nonce,
            "clock_drift_s": drift_s,
        }
    )
