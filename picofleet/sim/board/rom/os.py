# rp2's os, extended by the harness: urandom, uname, sync, and statvfs of a Pico W's littlefs
# (848 KB in 4 KB blocks; used blocks estimated from the flash directory as littlefs would
# count them: two for the root's metadata, and every file at least one).
import sys

_path = sys.path
sys.path = []
try:
    from os import *  # noqa: F403  (the built-in module)
finally:
    sys.path = _path

import _rt

_BLOCK = 4096
_BLOCKS = 848 * 1024 // _BLOCK


def urandom(n):
    return bytes(_rt.call("urandom", n))


def uname():
    return ("rp2", "rp2", "1.27.0", "v1.27.0 on 2025-12-09 (GNU 14.2.1 MinSizeRel)",
            "Raspberry Pi Pico W with RP2040")


def sync():
    pass


def statvfs(p="/"):
    used = _rt.call("flash_blocks", _BLOCK)
    free = max(0, _BLOCKS - used)
    return (_BLOCK, _BLOCK, _BLOCKS, free, free, 0, 0, 0, 0, 255)
