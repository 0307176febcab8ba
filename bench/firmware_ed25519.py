"""How long the Pico-W's Ed25519 verify takes, and what it allocates.

Runs ``pico_w/ed25519.py`` on a signature made by ``cryptography`` in real MicroPython (the
WebAssembly build under Node, with a Pico-W-sized heap) and on CPython, and prints the time
per verify and MicroPython's heap high-water mark. The RP2040 (Cortex-M0+ at 125 MHz) is
much slower than either: read the figures as a ratio between versions of the verifier, not
as the board's time.

    .venv/bin/python bench/firmware_ed25519.py [--runs 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "tests" / "firmware" / "run_mpy.mjs"
HEAP = 192 * 1024  # what the tests give MicroPython: about the Pico W's free heap

MP_SCRIPT = """
import binascii, gc, time
import ed25519
pk = binascii.unhexlify("{pk}")
msg = binascii.unhexlify("{msg}")
sig = binascii.unhexlify("{sig}")
gc.collect()
free0 = gc.mem_free()
low = free0
t0 = time.ticks_ms()
for _ in range({runs}):
    assert ed25519.verify(pk, msg, sig)
    low = min(low, gc.mem_free())
dt = time.ticks_diff(time.ticks_ms(), t0)
print("mp", dt / {runs}, free0 - low)
"""


def signed(n: int = 300) -> tuple[bytes, bytes, bytes]:
    """A public key, a manifest-sized message and its signature."""
    key = Ed25519PrivateKey.generate()
    msg = bytes(range(256)) * (n // 256) + bytes(n % 256)
    pk = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return pk, msg, key.sign(msg)


def micropython(pk: bytes, msg: bytes, sig: bytes, runs: int) -> tuple[float, int]:
    script = MP_SCRIPT.format(pk=pk.hex(), msg=msg.hex(), sig=sig.hex(), runs=runs)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.py"
        path.write_text(script)
        args = ["node", str(RUNNER), "--heap", str(HEAP)]
        for mod in ("ed25519.py", "sha512.py"):
            args += ["--file", f"{mod}={ROOT / 'pico_w' / mod}"]
        out = subprocess.run(
            [*args, str(path)], capture_output=True, text=True, check=True, timeout=600
        ).stdout.split()
    i = out.index("mp")
    return float(out[i + 1]), int(out[i + 2])


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
    mp_ms, mp_bytes = micropython(pk, msg, sig, runs)
    cp_ms = cpython(pk, msg, sig, runs)
    print(f"ed25519 verify of a {len(msg)}-byte manifest, {runs} runs")
    heap = f"{HEAP // 1024} KB heap"
    print(f"  MicroPython (wasm, {heap}): {mp_ms:8.1f} ms/verify, heap high-water {mp_bytes} B")
    print(f"  CPython {sys.version.split()[0]}: {cp_ms:8.1f} ms/verify")


if __name__ == "__main__":
    main()
