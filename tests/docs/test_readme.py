"""The README is a script: every shell block in README.md runs verbatim (bash -euo pipefail),
in order, against a hub started the README's way (``picofleet up`` from the venv) on
non-default ports and a non-default data dir.

A block that cannot run here carries ``<!-- not run by tests/docs/test_readme.py: why -->``
on the line before its fence; every other block must exit 0. Then the data the blocks were
meant to produce is checked in PostgreSQL: the published reading, the HTTP items, and the
OTA rollout finished on the simulated boards.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from picofleet.pgembed import EmbeddedPostgres
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
VENV_BIN = ROOT / ".venv" / "bin"
SKIP_MARK = re.compile(r"<!--\s*not run by tests/docs/test_readme\.py:\s*(.+?)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")
SHELL = {"sh", "bash", "shell"}
BLOCK_TIMEOUT_S = 600


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    code: str
    skip: str | None  # the reason given in the README, None: runs


def shell_blocks(text: str) -> list[Block]:
    """Every fenced sh/bash block, with the skip mark on the nearest non-blank line above."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        if m.group(1) in SHELL:
            above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            mark = SKIP_MARK.search(above)
            code = "\n".join(lines[i + 1 : end]) + "\n"
            blocks.append(Block(i + 1, code, mark.group(1) if mark else None))
        i = end + 1
    return blocks


def test_blocks_are_found_and_marks_name_a_reason() -> None:
    blocks = shell_blocks(README.read_text())
    assert len([b for b in blocks if b.skip is None]) >= 4
    assert all(b.skip for b in blocks if b.skip is not None)
    skipped = [b.code for b in blocks if b.skip is not None]
    assert any("make up" in c for c in skipped) and any("docker compose" in c for c in skipped)


@dataclass
class Hub:
    data: Path
    env: dict[str, str]
    http: str
    proc: subprocess.Popen[bytes]


@pytest.fixture
def readme_hub() -> Iterator[Hub]:
    """``picofleet up`` from the venv on free (non-default) ports and its own data dir,
    configured only through PICOFLEET_* variables, as the README says."""
    assert (VENV_BIN / "picofleet").exists(), "run `make install` first"
    # Outside pytest's temp base: the embedded PostgreSQL may run as another user (root).
    data = Path(tempfile.mkdtemp(prefix="picofleet-readme-"))
    os.chmod(data, 0o755)
    mqtt_port, http_port = free_port(), free_port()
    assert 1883 not in (mqtt_port, http_port) and 8000 not in (mqtt_port, http_port)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PICOFLEET_", "VIRTUAL_ENV")) and k != "DATABASE_URL"
    }
    env |= {
        "PATH": f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        "PICOFLEET_DATA_DIR": str(data),
        "PICOFLEET_MQTT_PORT": str(mqtt_port),
        "PICOFLEET_HTTP_PORT": str(http_port),
    }
    log = open(data.with_suffix(".up.log"), "wb")  # closed in the finally below
    proc = subprocess.Popen(["picofleet", "up"], cwd=ROOT, env=env, stdout=log, stderr=log)
    http = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, data.with_suffix(".up.log").read_text()[-3000:]
            try:
                if httpx.get(f"{http}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "hub not ready"
            time.sleep(0.5)
        yield Hub(data, env, http, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        EmbeddedPostgres(data).stop()
        shutil.rmtree(data, ignore_errors=True)
        data.with_suffix(".up.log").unlink(missing_ok=True)


async def _facts(db_url: str) -> dict[str, object]:
    conn = await asyncpg.connect(db_url)
    try:
        return {
            "mqtt_reading": await conn.fetchval(
                "SELECT count(*) FROM processed_record p JOIN device d ON d.id = p.device_id"
                " WHERE d.device_key = 'AI-ABCDE1'"
            ),
            "http_raw": await conn.fetchval(
                "SELECT count(*) FROM raw_record WHERE source = 'http'"
            ),
            "http_errors": [
                r["code"]
                for r in await conn.fetch(
                    "SELECT e.code FROM ingest_error e JOIN raw_record r ON r.id = e.raw_id"
                    " WHERE r.source = 'http'"
                )
            ],
            "rollouts": [
                tuple(r)
                for r in await conn.fetch("SELECT version, state FROM ota_rollout ORDER BY id")
            ],
            "members": [
                tuple(r)
                for r in await conn.fetch(
                    "SELECT device_key, state FROM ota_rollout_device ORDER BY 1"
                )
            ],
            "firmware": [
                r["firmware"]
                for r in await conn.fetch(
                    "SELECT firmware FROM device WHERE device_type = 'pico_w' ORDER BY device_key"
                )
            ],
        }
    finally:
        await conn.close()


def test_readme_runs_verbatim(readme_hub: Hub) -> None:
    blocks = shell_blocks(README.read_text())
    ran: list[int] = []
    for block in blocks:
        if block.skip is not None:
            continue
        res = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.code],
            cwd=ROOT,
            env=readme_hub.env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
            check=False,
        )
        assert res.returncode == 0, (
            f"README.md block at line {block.line} exited {res.returncode}\n{block.code}\n"
            f"--- stdout\n{res.stdout[-3000:]}\n--- stderr\n{res.stderr[-3000:]}"
        )
        ran.append(block.line)
    assert ran == [b.line for b in blocks if b.skip is None]

    db_url = subprocess.run(
        ["picofleet", "db", "url"], env=readme_hub.env, capture_output=True, text=True, check=True
    ).stdout.strip()
    facts = asyncio.run(_facts(db_url))
    assert facts["mqtt_reading"] == 1  # the mosquitto_pub reading, stored once
    assert facts["http_raw"] == 2 and facts["http_errors"] == ["out_of_range"]
    assert facts["rollouts"] == [("1.1.0", "completed")]
    members = facts["members"]
    assert isinstance(members, list) and len(members) == 5
    assert {state for _key, state in members} == {"booted_ok"}
    assert facts["firmware"] == ["1.1.0"] * 5  # each board runs the released main.py
