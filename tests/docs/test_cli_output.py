"""What an operator reads: one-shot commands print their answer and nothing else unless
``--verbose``; tables keep every main cell on one line at 80 columns."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.docs.conftest import ROOT, Hub

DEVICES = [f"AI-TABLE{i:02d}" for i in range(12)]


def picofleet(hub: Hub, *args: str, columns: int | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(hub.env)
    if columns is not None:
        env["COLUMNS"] = str(columns)
    res = subprocess.run(
        ["picofleet", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, (args, res.stdout, res.stderr)
    return res


def test_one_shot_commands_are_quiet_unless_verbose(readme_hub: Hub) -> None:
    for args in (
        ["creds", "device", "AI-QUIET1"],
        ["creds", "operator", "--json"],
        ["db", "url"],
        ["device", "list"],
        ["keys", "init"],
        ["ota", "status"],
        ["ota", "log"],
    ):
        res = picofleet(readme_hub, *args)
        assert res.stdout and res.stderr == "", (args, res.stderr)
    # --verbose anywhere on the line brings the log lines back
    for args in (["--verbose", "db", "url"], ["db", "url", "--verbose"]):
        res = picofleet(readme_hub, *args)
        assert "postgres.adopted" in res.stderr, (args, res.stderr)
        assert res.stdout.startswith("postgresql://")


def _release(hub: Hub, tmp_path: Path, version: str) -> None:
    main = tmp_path / "main.py"
    main.write_text((ROOT / "pico_w" / "main.py").read_text().replace("1.0.0", version))
    picofleet(hub, "ota", "release", str(main), "--version", version, "--notes", "x" * 70)


def test_tables_read_well_at_80_columns(readme_hub: Hub, tmp_path: Path) -> None:
    url = picofleet(readme_hub, "db", "url").stdout.strip()
    values = ", ".join(f"('{k}', 'pico_w', '1.0.0')" for k in DEVICES)
    subprocess.run(
        [
            "psql",
            url,
            "-qc",
            f"INSERT INTO device (device_key, device_type, firmware) VALUES {values}",
        ],
        check=True,
        capture_output=True,
    )
    picofleet(readme_hub, "keys", "init")
    _release(readme_hub, tmp_path, "1.2.0")
    picofleet(readme_hub, "ota", "rollout", "1.2.0", "--waves", "10,50,100", "--soak-s", "600")
    for args in (["ota", "status"], ["ota", "log"], ["ota", "releases"], ["device", "list"]):
        out = picofleet(readme_hub, *args, columns=80).stdout
        lines = out.splitlines()
        assert max(len(line) for line in lines) <= 80, (args, out)
        if args == ["ota", "releases"]:
            row = [line for line in lines if "1.2.0" in line]
            assert len(row) == 1 and "pico_w" in row[0], out
            continue
        keys = DEVICES if args != ["ota", "log"] else [k for k in DEVICES if k in out]
        assert keys, out
        for key in keys:
            rows = [line for line in lines if key in line]
            assert len(rows) >= 1, (args, key, out)
            cells = rows[0]
            if args[0] == "ota":  # version and state of that device on the same line
                assert "1.2.0" in cells and any(s in cells for s in ("pending", "offered")), (
                    args,
                    key,
                    out,
                )
            else:
                assert "pico_w" in cells and "1.0.0" in cells, (args, key, out)
    status = picofleet(readme_hub, "ota", "status", columns=80).stdout.splitlines()
    assert any("1.2.0" in line and "running" in line and "1/3" in line for line in status), status
    assert any("booted_ok" in line and "rolled_back" in line for line in status), status
