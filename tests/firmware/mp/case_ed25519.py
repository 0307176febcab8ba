# ed25519: RFC 8032 section 7.1 vectors and signatures made by `cryptography`; anything
# tampered fails. Prints how long one verify takes here.
import binascii
import json
import time

import ed25519

with open("vectors.json") as _f:
    V = json.loads(_f.read())["ed25519"]


def _b(h):
    return binascii.unhexlify(h)


def _flip(b, i):
    out = bytearray(b)
    out[i] ^= 0x01
    return bytes(out)


def test_rfc8032_vectors():
    for name, pk, msg, sig in V["rfc"]:
        assert ed25519.verify(_b(pk), _b(msg), _b(sig)), name


def test_signatures_made_by_cryptography():
    for pk, msg, sig in V["made"]:
        assert ed25519.verify(_b(pk), _b(msg), _b(sig)), len(msg)


def test_tampering_fails():
    name, pk, msg, sig = V["rfc"][2]
    pk, msg, sig = _b(pk), _b(msg), _b(sig)
    assert not ed25519.verify(pk, msg + b"x", sig)
    assert not ed25519.verify(pk, _flip(msg, 0), sig)
    for i in (0, 31, 32, 63):
        assert not ed25519.verify(pk, msg, _flip(sig, i)), i
    other = _b(V["rfc"][0][1])
    assert not ed25519.verify(other, msg, sig)
    assert not ed25519.verify(pk[:31], msg, sig)
    assert not ed25519.verify(pk, msg, sig[:63])


def test_non_canonical_and_invalid_inputs_fail():
    name, pk, msg, sig = V["rfc"][0]
    pk, msg, sig = _b(pk), _b(msg), _b(sig)
    # s >= L must be refused (malleability)
    L = 2**252 + 27742317777372353535851937790883648493
    s = int.from_bytes(sig[32:], "little") + L
    assert not ed25519.verify(pk, msg, sig[:32] + s.to_bytes(32, "little"))
    # a public key that is not a point, and one with y >= p
    assert not ed25519.verify(b"\x02" + b"\x00" * 31, msg, sig)
    assert not ed25519.verify(b"\xff" * 31 + b"\x7f", msg, sig)


def test_feed_is_called_during_a_verify():
    calls = []
    name, pk, msg, sig = V["rfc"][1]
    assert ed25519.verify(_b(pk), _b(msg), _b(sig), lambda: calls.append(1))
    assert len(calls) >= 7


def test_feed_is_called_per_block_of_the_message():
    # SHA-512 in Python is the slow part of a verify: no long stretch without a feed
    calls = []
    pk, msg, sig = [_b(x) for x in V["made"][-1]]  # 1500 bytes: 12 blocks
    assert ed25519.verify(pk, msg, sig, lambda: calls.append(1))
    assert len(calls) >= 8 + (len(msg) + 127) // 128, len(calls)


def test_zz_time_one_verify():
    pk, msg, sig = [_b(x) for x in V["made"][-1]]
    n = 3
    t = time.ticks_ms()
    for _ in range(n):
        assert ed25519.verify(pk, msg, sig)
    ms = time.ticks_diff(time.ticks_ms(), t) / n
    print("TIME ed25519_verify_ms %.1f (%d-byte message)" % (ms, len(msg)))
