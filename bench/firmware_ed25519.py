"""How long the Pico-W's Ed25519 verify takes, and what it allocates.

Runs ``pico_w/ed25519.py`` on a signature made by ``cryptography`` in real MicroPython (a
board of ``picofleet.sim.board``: the WebAssembly build under Node) and on CPython, and prints
the time per verify, what one verify allocates (garbage included: this build collects only
between top-level calls) and the live heap after it (right after a collection). The RP2040
(Cortex-M0+ at 125 MHz) is much slower than either: read the figures as a ratio between
versions of the verifier, not as the board's time.

    .venv/bin/python bench/firmware_ed25519.py [--runs 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from picofleet.sim.board import Board, Heap, firmware_dir

MP_SCRIPT = """
import binascii, gc, time
import ed25519
pk = binascii.unhexlify("{pk}")
msg = binascii.unhexlify("{msg}")
sig = binascii.unhexlify("{sig}")
a0 = gc.mem_alloc()
t0 = time.ticks_ms()
for _ in range({runs}):
    assert ed25519.verify(pk, msg, sig)
dt = time.ticks_diff(time.ticks_ms(), t0)
print("mp", dt / {runs}, (gc.mem_alloc() - a0) // {runs})
"""


def signed(n: int = 300) -> tuple[bytes, bytes, bytes]:
    """A public key, a manifest-sized message and its signature."""
    key = Ed25519PrivateKey.generate()
    msg = bytes(range(256)) * (n // 256) + bytes(n % 256)
    pk = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return pk, msg, key.sign(msg)


def micropython(pk: bytes, msg: bytes, sig: bytes, runs: int) -> tuple[float, int, Heap]:
    """(ms per verify, bytes allocated per verify, live heap after) on a board whose flash
    holds only the verifier."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for mod in ("ed25519.py", "sha512.py"):
            shutil.copyfile(firmware_dir() / mod, root / mod)
        board = Board(root, name="ed25519").start()
        try:
            board.wait(lambda e: e["ev"] == "heap" and e["label"] == "boot.py", timeout=60)
            code = MP_SCRIPT.format(pk=pk.hex(), msg=msg.hex(), sig=sig.hex(), runs=runs)
            out = board.exec(code, timeout=600)
            heap = board.heap("after-verify")
        finally:
            board.stop()
    fields = next(ln for ln in out if ln.startswith("mp ")).split()
    return float(fields[1]), int(fields[2]), heap


def cpython(pk: bytes, msg: bytes, sig: bytes, runs: int) -> float:
    sys.path.insert(0, str(ROOT / "pico_w"))
    spec = importlib.util.spec_from_file_location("ed25519", ROOT / "pico_w" / "ed25519.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    t0 = time.perf_counter()
    for _ in range(runs):
        assert mod.verify(pk, msg, sig)
    return (time.perf_counter() - t0) / runs * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    runs = ap.parse_args().runs
    pk, msg, sig = signed()
    mp_ms, mp_bytes, heap = micropython(pk, msg, sig, runs)
    cp_ms = cpython(pk, msg, sig, runs)
    print(f"ed25519 verify of a {len(msg)}-byte manifest, {runs} runs")
    print(
        f"  MicroPython 1.27 (wasm board): {mp_ms:8.1f} ms/verify, {mp_bytes / 1024:.0f} KB"
        f" allocated per verify; live heap after {heap.firmware / 1024:.1f} KB"
        f" (+{heap.baseline / 1024:.1f} KB harness)"
    )
    print(f"  CPython {sys.version.split()[0]}: {cp_ms:8.1f} ms/verify")


if __name__ == "__main__":
    main()
