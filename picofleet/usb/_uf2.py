"""UF2 images for the RP2040: check one, copy it to every BOOTSEL drive.

A UF2 file is a run of 512-byte blocks, each framed by three magic numbers and carrying up
to 476 bytes for a flash address. The RP2040's boot ROM takes only blocks flagged with its
family id (0xE48BFF56) and silently ignores the rest, so an image for another chip would
"copy" fine and do nothing: we refuse it before touching any drive.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from picofleet.usb._discovery import UF2_INFO_FILE

BLOCK = 512
MAGIC_START0 = 0x0A324655  # "UF2\n"
MAGIC_START1 = 0x9E5D5157
MAGIC_END = 0x0AB16F30
FLAG_NOT_MAIN_FLASH = 0x00000001
FLAG_FAMILY_ID = 0x00002000
RP2040_FAMILY = 0xE48BFF56
MAX_PAYLOAD = 476
FLASH_START, FLASH_END = 0x10000000, 0x11000000  # XIP flash window, up to 16 MB
_HEADER = struct.Struct("<8I")


class Uf2Error(ValueError):
    """The file is not a UF2 image the RP2040 will take."""


@dataclass(frozen=True, slots=True)
class Uf2Info:
    blocks: int
    payload_bytes: int
    start: int
    end: int


def check_uf2(data: bytes) -> Uf2Info:
    if not data or len(data) % BLOCK:
        raise Uf2Error(f"{len(data)} bytes is not a whole number of {BLOCK}-byte UF2 blocks")
    total = len(data) // BLOCK
    payload, lo, hi = 0, FLASH_END, FLASH_START
    for i in range(total):
        off = i * BLOCK
        m0, m1, flags, addr, size, block_no, num_blocks, family = _HEADER.unpack_from(data, off)
        (m_end,) = struct.unpack_from("<I", data, off + BLOCK - 4)
        if (m0, m1, m_end) != (MAGIC_START0, MAGIC_START1, MAGIC_END):
            raise Uf2Error(f"block {i}: bad UF2 magic numbers")
        if flags & FLAG_NOT_MAIN_FLASH:
            continue
        if not flags & FLAG_FAMILY_ID:
            raise Uf2Error(f"block {i}: no family id; the RP2040 boot ROM needs one")
        if family != RP2040_FAMILY:
            raise Uf2Error(f"block {i}: family 0x{family:08X} is not the RP2040 (0xE48BFF56)")
        if size > MAX_PAYLOAD:
            raise Uf2Error(f"block {i}: payload of {size} bytes exceeds {MAX_PAYLOAD}")
        if block_no != i or num_blocks != total:
            raise Uf2Error(
                f"block {i}: numbered {block_no} of {num_blocks}, expected {i} of {total}"
            )
        if not (FLASH_START <= addr and addr + size <= FLASH_END):
            raise Uf2Error(f"block {i}: address 0x{addr:08X} is outside the RP2040's flash")
        payload += size
        lo, hi = min(lo, addr), max(hi, addr + size)
    if payload == 0:
        raise Uf2Error("no block targets the RP2040's flash")
    return Uf2Info(blocks=total, payload_bytes=payload, start=lo, end=hi)


def copy_to_drive(data: bytes, mount: Path, name: str) -> None:
    """Write the image onto a BOOTSEL drive and push it to the device before returning."""
    target = mount / name
    with open(target, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def wait_gone(mount: Path, timeout: float) -> bool:
    """True once the drive went away (the board rebooted into the new firmware)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not (mount / UF2_INFO_FILE).exists():
            return True
        time.sleep(0.2)
    return False
