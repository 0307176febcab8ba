# Ed25519 signature verification (RFC 8032, section 5.1.7) in pure MicroPython.
# Points are extended twisted Edwards coordinates (X, Y, Z, T) with x = X/Z, y = Y/Z and
# T = XY/Z, so additions need no inversion. Verification computes [s]B - [k]A in one pass
# (Shamir's trick) and compares its encoding with R: strict, cofactorless, like ref10.
# Only verification lives here; devices never hold a signing key.

_P = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFED
_L = 0x1000000000000000000000000000000014DEF9DEA2F79CD65812631A5CF5D3ED
_D = 37095705934669439343138083508754565189542113879843219016388785533085940283555
_D2 = 16295367250680780974490674513165176452449235426866156013048779062215315747161
_SQRT_M1 = 19681161376707505956807079304988542015446066515923890162744021073123829784752
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
_BY = 46316835694926478169428394003475163141307993866256225615783033603165251855960


def _add(p, q):
    # add-2008-hwcd-3 for a = -1
    P = _P
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = t1 * _D2 % P * t2 % P
    d = 2 * z1 * z2 % P
    e = b - a
    f = d - c
    g = d + c
    h = b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _double(p):
    # dbl-2008-hwcd for a = -1
    P = _P
    x1, y1, z1, _ = p
    a = x1 * x1 % P
    b = y1 * y1 % P
    c = 2 * z1 * z1 % P
    h = a + b
    xy = x1 + y1
    e = h - xy * xy % P
    g = a - b
    f = c + g
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _decode(s):
    # A 32-byte point encoding, or None when it is not on the curve or not canonical.
    P = _P
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= P:
        return None
    yy = y * y % P
    u = (yy - 1) % P
    v = (_D * yy + 1) % P
    v3 = v * v % P * v % P
    x = u * v3 % P * pow(u * v3 % P * v3 % P * v % P, (P - 5) // 8, P) % P
    vxx = v * x % P * x % P
    if vxx != u:
        if vxx != P - u:
            return None
        x = x * _SQRT_M1 % P
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


def _encode(p):
    P = _P
    x, y, z, _ = p
    zi = pow(z, P - 2, P)
    x = x * zi % P
    y = y * zi % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def verify(public_key, message, signature, feed=None):
    # True when signature (64 bytes) is public_key's (32 bytes) signature of message.
    # feed, when given, is called per 128-byte block hashed and every 32 bits of the scalar
    # loop (the watchdog: SHA-512 in Python is the slow part, seconds on a board).
    if len(public_key) != 32 or len(signature) != 64:
        return False
    a = _decode(public_key)
    if a is None:
        return False
    r = signature[:32]
    s = int.from_bytes(signature[32:], "little")
    if s >= _L:
        return False
    from sha512 import sha512

    h = sha512(r)
    h.update(public_key)
    for i in range(0, len(message), 128):
        if feed is not None:
            feed()
        h.update(message[i : i + 128])
    if feed is not None:
        feed()
    k = int.from_bytes(h.digest(), "little") % _L
    P = _P
    neg_a = ((P - a[0]) % P, a[1], 1, (P - a[3]) % P)
    base = (_BX, _BY, 1, _BX * _BY % P)
    table = (None, base, neg_a, _add(base, neg_a))
    q = (0, 1, 1, 0)
    # MicroPython ints have no bit_length(): both scalars are below L < 2**253.
    i = 252
    sk = s | k
    while i >= 0 and not (sk >> i):
        i -= 1
    while i >= 0:
        q = _double(q)
        j = ((s >> i) & 1) | (((k >> i) & 1) << 1)
        if j:
            q = _add(q, table[j])
        if feed is not None and not i & 31:
            feed()
        i -= 1
    return _encode(q) == bytes(r)
