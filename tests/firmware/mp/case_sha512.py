# sha512: digests of several lengths (around the 112/128-byte padding edges) against
# CPython's hashlib.sha512, in one piece and fed in odd-sized chunks.
import binascii
import json

import sha512

with open("vectors.json") as _f:
    V = json.loads(_f.read())["sha512"]


def _msg(n):
    return bytes([(i * 7 + 3) & 0xFF for i in range(n)])


def test_known_lengths_in_one_piece():
    for n, hexdigest in V:
        got = binascii.hexlify(sha512.sha512(_msg(n)).digest()).decode()
        assert got == hexdigest, n


def test_known_lengths_in_chunks():
    for n, hexdigest in V:
        m = _msg(n)
        h = sha512.sha512()
        i = 0
        step = 1
        while i < n:
            h.update(m[i : i + step])
            i += step
            step = step * 3 % 61 + 1
        assert binascii.hexlify(h.digest()).decode() == hexdigest, n


def test_digest_can_be_repeated_and_continued():
    h = sha512.sha512(b"ab")
    first = h.digest()
    assert h.digest() == first
    h.update(b"c")
    assert h.digest() != first
