"""The Pico-W firmware's live heap, measured on a board in real MicroPython against a real hub.

Boots one board (``picofleet.sim.board``: the unmodified ``pico_w`` files in the WebAssembly
MicroPython 1.27, real TCP) against an in-process hub (embedded PostgreSQL, amqtt, bridge,
HTTP) and prints ``gc.mem_alloc()`` right after a collection at: boot (interpreter and the
harness's stand-ins only), after boot.py, after the app's imports, after the first MQTT
connect, in steady state (the highest of --steady-s seconds of samples), and after an Ed25519
verify run in the board; each beside the 100 KB ceiling, raw and less the harness baseline
(on rp2 machine, socket, asyncio... are C or frozen code, next to nothing in the heap). Then
the Ed25519 verify time in the interpreter. The heap during an OTA download comes from the
OTA benches/tests (they use the same Board.heap()).

    .venv/bin/python bench/firmware_heap.py [--steady-s 20] [--runs 3] [--tls]

--tls: the board gets a CA (config.json ``ca_pem``) and reaches the broker through a TLS server
in front of it (tests/firmware/board/tlsfront.py): the rows then hold the firmware's side of a
TLS session (its SSLContext, the CA, the non-blocking I/O) and the harness's ssl stand-in,
never mbedTLS's own buffers, which are C allocations on rp2 and do not exist here.

What these figures are not: a Pico W's. Floats are double here, the interpreter is much
faster than a 125 MHz Cortex-M0+, and this build's heap grows instead of raising MemoryError
(see picofleet/sim/board/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.firmware_ed25519 import MP_SCRIPT  # the same verify loop as the Ed25519 bench
from picofleet.core import db
from picofleet.core.credentials import FleetKeys
from picofleet.core.pgembed import EmbeddedPostgres
from picofleet.core.settings import Settings
from picofleet.sim.board import HEAP_CEILING, Board, Heap, device_config, flash

SECRET = "bench-fleet-secret-0123456789"
KEY = "BENCH-HEAP"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def hub(root: Path) -> AsyncIterator[Settings]:
    from picofleet.hub import run_hub

    pg = EmbeddedPostgres(root / "pg")
    pg.start()
    try:
        pg.ensure_database("bench")
        await db.migrate(pg.url("bench"))
        settings = Settings(
            data_dir=root / "data",
            database_url=pg.url("bench"),
            provision_secret=SecretStr(SECRET),
            mqtt_port=free_port(),
            http_port=free_port(),
            mqtt_bind="127.0.0.1",
            http_bind="127.0.0.1",
            bridge_client_id=f"bridge-{uuid.uuid4().hex[:6]}",
        )
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(
            run_hub(
                settings, roles={"bridge", "http"}, stop=stop, ready=ready, handle_signals=False
            )
        )
        await asyncio.wait_for(ready.wait(), 60)
        try:
            yield settings
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
    finally:
        pg.stop()


def row(label: str, h: Heap) -> None:
    pct = 100 * h.firmware / HEAP_CEILING
    print(
        f"  {label:<28} {h.alloc / 1024:7.1f} KB raw {h.firmware / 1024:7.1f} KB firmware"
        f"  ({pct:3.0f}% of {HEAP_CEILING // 1024} KB)"
    )


async def measure(root: Path, steady_s: float, runs: int, use_tls: bool) -> None:
    from picofleet.core.signing import key_id
    from tests.firmware.board.tlsfront import TlsFront, make_ca, server_cert

    signer = Ed25519PrivateKey.generate()
    pub = signer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    async with hub(root) as settings, contextlib.AsyncExitStack() as stack:
        keys = FleetKeys(SECRET.encode())
        port, ca_pem = settings.mqtt_port, None
        if use_tls:
            ca = make_ca()
            front = TlsFront(("127.0.0.1", port), *server_cert(ca), root / "front")
            await stack.enter_async_context(front)
            port, ca_pem = front.port, ca.pem
        cfg = device_config(
            KEY,
            keys,
            broker=("127.0.0.1", port),
            hub_http=f"http://127.0.0.1:{settings.http_port}",
            telemetry_interval_s=2,
            ota_key=(base64.b64encode(pub).decode(), key_id(pub)),
            ca_pem=ca_pem,
        )
        flash(root / "flash", cfg)
        board = Board(root / "flash", name=KEY)
        board.start()
        try:
            await asyncio.to_thread(
                board.wait, lambda e: e["ev"] == "heap" and e["label"] == "connect", timeout=60
            )
            steady: list[Heap] = []
            end = asyncio.get_running_loop().time() + steady_s
            while asyncio.get_running_loop().time() < end:
                await asyncio.sleep(1)
                steady.append(await asyncio.to_thread(board.heap, f"steady-{len(steady)}"))
            msg = bytes(range(256)) + bytes(44)  # a manifest-sized message
            code = MP_SCRIPT.format(
                pk=pub.hex(), msg=msg.hex(), sig=signer.sign(msg).hex(), runs=runs
            )
            out = await asyncio.to_thread(board.exec, code)
            verify = await asyncio.to_thread(board.heap, "after-verify")
            bench = next(ln for ln in out if ln.startswith("mp ")).split()
            by = {h.label: h for h in board.heaps()}
            mode = "MQTT over TLS (firmware side only)" if use_tls else "plain MQTT"
            print(f"live heap of {KEY} (gc.mem_alloc() after a collection), {mode}, wasm 1.27")
            print(f"  harness baseline at boot: {by['boot'].alloc / 1024:.1f} KB")
            for label in ("boot.py", "imports", "connect"):
                row(label, by[label])
            top = max(steady, key=lambda h: h.alloc)
            row(f"steady ({len(steady)} samples, max)", top)
            row("after an Ed25519 verify", verify)
            print(f"  resets during the run: {board.resets() or 'none'}")
            print(
                f"Ed25519 verify of a {len(msg)}-byte message in the interpreter: "
                f"{float(bench[1]):.1f} ms/verify ({runs} runs), "
                f"{int(bench[2]) / 1024:.1f} KB allocated per verify (garbage included)"
            )
        finally:
            board.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steady-s", type=float, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tls", action="store_true", help="the board speaks TLS to the broker")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="picofleet-bench-heap-"))
    os.chmod(root, 0o755)  # the embedded PostgreSQL runs as another user when we are root
    try:
        asyncio.run(measure(root, args.steady_s, args.runs, args.tls))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
