"""``picofleet simulate`` fails loudly (non-zero exit, a message) when the hub's broker is
not there, with the load generator and with the firmware boards alike."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import CLI, SECRET, free_port, new_hub_dir


@pytest.mark.parametrize("mode", [[], ["--firmware"]])
def test_simulate_without_a_hub_fails_loudly(tmp_path: Path, mode: list[str]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    new_hub_dir(data)
    dead = free_port()  # a hub that recorded its endpoints and is gone now
    (data / "hub.json").write_text(
        json.dumps({"mqtt_bind": "127.0.0.1", "mqtt_port": dead, "http_port": free_port()})
    )
    res = subprocess.run(
        [*CLI, "simulate", *mode, "--devices", "2", "--duration", "3", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PICOFLEET_PROVISION_SECRET": SECRET},
    )
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert f"cannot reach the hub's MQTT broker at 127.0.0.1:{dead}" in res.stderr
    assert "--data-dir" in res.stderr
    assert "boots" not in res.stdout  # no board was started
