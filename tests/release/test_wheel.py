"""The wheel from the release bundle, installed (not editable) in a fresh venv, runs the hub:
the migrations and the firmware ship inside it, and it knows which commit it is."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from picofleet.core.pgembed import EmbeddedPostgres
from tests.helpers import free_port, read_banner
from tests.release.conftest import VERSION, Bundles, clean_env
from tests.release.test_bundle import tree_files


def run(venv: Path, *args: str, cwd: Path, program: str = "picofleet") -> str:
    """``program`` of ``venv`` (the installed CLI, or its python) outside the source tree."""
    res = subprocess.run(
        [str(venv / "bin" / program), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=clean_env(),
        timeout=180,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def get_json(url: str, within: float = 15.0) -> Any:
    """GET ``url``, retrying while the server is still binding its port."""
    deadline = time.monotonic() + within
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return json.loads(resp.read())
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def site_packages(venv: Path) -> Path:
    (path,) = (venv / "lib").glob("python3*/site-packages")
    return path


def test_installed_wheel_holds_sql_and_firmware(
    wheel_venv: Path, snapshot: Path, tmp_path: Path
) -> None:
    code = "import picofleet; print(picofleet.__file__)"
    out = run(wheel_venv, "-c", code, cwd=tmp_path, program="python")
    package = Path(out.strip()).parent
    assert package == site_packages(wheel_venv) / "picofleet"
    for sub in ("sql", "pico_w", "pico_usb"):
        shipped = tree_files(package, sub)
        assert shipped == tree_files(snapshot, sub)


ASSET_PROBE = """
import json
from picofleet.core.assets import ASSETS, asset_dir
from picofleet.core.firmware import firmware_dir
from picofleet.web.docs import ASSET_DIR
from picofleet.sim.board import HERE
paths = {name: str(asset_dir(name)) for name in ASSETS}
paths |= {"firmware": str(firmware_dir("pico_w")), "docs": str(ASSET_DIR), "board": str(HERE)}
print(json.dumps(paths))
"""


def test_every_asset_is_found_inside_the_installed_package(
    wheel_venv: Path, tmp_path: Path
) -> None:
    """One finder for packaged folders, and it answers from the wheel even when another
    project left a folder of the same name in site-packages."""
    site = site_packages(wheel_venv)
    decoy = site / "sql"
    decoy.mkdir(exist_ok=True)
    try:
        out = run(wheel_venv, "-c", ASSET_PROBE, cwd=tmp_path, program="python")
    finally:
        decoy.rmdir()
    paths = {k: Path(v) for k, v in json.loads(out).items()}
    assert paths["sql"] == site / "picofleet" / "sql"
    assert paths["pico_w"] == paths["firmware"] == site / "picofleet" / "pico_w"
    assert (paths["pico_w"] / "main.py").is_file() and (paths["pico_usb"] / "main.py").is_file()
    assert paths["docs"] == site / "picofleet" / "web" / "static" / "swagger-ui"
    assert (paths["board"] / "host.mjs").is_file()
    assert all(p.is_relative_to(site / "picofleet") for p in paths.values())


def test_version_names_the_release_commit(
    wheel_venv: Path, bundles: Bundles, tmp_path: Path
) -> None:
    info = json.loads(run(wheel_venv, "version", "--json", cwd=tmp_path))
    assert info == {
        "version": VERSION,
        "commit": bundles.commit,
        "commit_source": "build",
        "firmware": bundles.first.meta.firmware,
    }
    text = run(wheel_venv, "version", cwd=tmp_path)
    assert text.startswith(f"picofleet {VERSION}\ncommit    {bundles.commit} (build)")


def test_migrate_and_up_from_the_wheel(
    wheel_venv: Path, snapshot: Path, bundles: Bundles, tmp_path: Path, hub_data: Path
) -> None:
    data = hub_data
    try:
        out = run(wheel_venv, "db", "migrate", "--data-dir", str(data), cwd=tmp_path)
        migrations = sorted(p.stem for p in (snapshot / "sql").glob("[0-9]*.sql"))
        assert out.strip() == f"applied {len(migrations)} migration(s): {', '.join(migrations)}"

        mqtt_port, http_port = free_port(), free_port()
        cmd = [str(wheel_venv / "bin" / "picofleet"), "up", "--data-dir", str(data)]
        cmd += ["--mqtt-port", str(mqtt_port), "--http-port", str(http_port)]
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
            env=clean_env(PICOFLEET_LOG_FORMAT="json"),
        )
        try:
            lines = read_banner(proc, 120)
            banner = "".join(lines)
            assert "picofleet hub is up" in banner and f"http://127.0.0.1:{http_port}/" in banner
            health = get_json(f"http://127.0.0.1:{http_port}/health")
            assert health["status"] == "ok" and health["version"] == VERSION
            # /docs works offline from the installed wheel: its assets are package data.
            url = f"http://127.0.0.1:{http_port}/docs/assets/swagger-ui-bundle.js"
            with urllib.request.urlopen(url, timeout=5) as resp:
                assert resp.status == 200 and len(resp.read()) > 1_000_000
            # So do the dashboard's script and its vendored chart library.
            for asset in ("dash.js", "uplot/uPlot.iife.min.js", "uplot/uPlot.min.css"):
                url = f"http://127.0.0.1:{http_port}/static/{asset}"
                with urllib.request.urlopen(url, timeout=5) as resp:
                    assert resp.status == 200 and len(resp.read()) > 1_000
        finally:
            proc.send_signal(signal.SIGTERM)
            rest = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, banner + rest
        assert "hub.stopped" in rest
    finally:
        with contextlib.suppress(Exception):  # left running only if the test failed early
            EmbeddedPostgres(data).stop()
