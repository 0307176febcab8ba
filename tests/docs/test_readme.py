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
import re
import subprocess
from dataclasses import dataclass

import asyncpg

from tests.docs.conftest import ROOT, Hub

README = ROOT / "README.md"
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


def test_a_block_runs_unless_marked_right_above() -> None:
    text = (
        "intro\n\n<!-- not run by tests/docs/test_readme.py: needs Docker -->\n"
        "```sh\ndocker compose up\n```\n\nprose\n<!-- not run by tests/docs/test_readme.py: x -->\n"
        "\nlater prose\n```bash\nfalse\n```\n```python\nprint()\n```\n"
    )
    blocks = shell_blocks(text)
    assert [(b.code, b.skip) for b in blocks] == [
        ("docker compose up\n", "needs Docker"),
        ("false\n", None),  # a mark separated by prose does not count
    ]


def test_blocks_are_found_and_marks_name_a_reason() -> None:
    blocks = shell_blocks(README.read_text())
    assert len([b for b in blocks if b.skip is None]) >= 4
    assert all(b.skip for b in blocks if b.skip is not None)
    skipped = [b.code for b in blocks if b.skip is not None]
    assert any("make up" in c for c in skipped) and any("docker compose" in c for c in skipped)


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
    assert isinstance(members, list) and len(members) == 3
    assert {state for _key, state in members} == {"booted_ok"}
    assert facts["firmware"] == ["1.1.0"] * 3  # each board runs the released main.py
