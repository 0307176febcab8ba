# provision: HMAC-SHA256 (RFC 4231) and the startup token the hub computes.
import binascii
import json

import provision

with open("vectors.json") as _f:
    V = json.loads(_f.read())


def test_hmac_rfc4231_case_1_and_a_long_key():
    mac = provision.hmac_sha256(b"\x0b" * 20, b"Hi There")
    want = "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
    assert binascii.hexlify(mac).decode() == want
    for key, msg, want in V["hmac"]:
        got = provision.hmac_sha256(binascii.unhexlify(key), msg.encode())
        assert binascii.hexlify(got).decode() == want


def test_token_matches_the_hub():
    t = V["token"]
    assert provision.token(t["provision_key"], t["serial"], t["ts"], t["nonce"]) == t["expected"]


def test_startup_message():
    t = V["token"]
    cfg = {"device_key": t["serial"], "provision_key": t["provision_key"], "device_type": "pico_w"}
    doc = json.loads(provision.startup(cfg, "1.0.0", t["ts"], t["nonce"], 0))
    assert doc["event_type"] == "device_startup" and doc["serial"] == t["serial"]
    assert doc["provision_token"] == t["expected"]
    assert doc["timestamp"] == t["ts"] and doc["nonce"] == t["nonce"]
    assert doc["firmware"] == "1.0.0" and doc["clock_drift_s"] == 0
