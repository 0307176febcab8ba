"""``picofleet version`` and ``/health`` from the checkout: the version, and the commit git
names (``-dirty`` while the tree has changes); PICOFLEET_COMMIT (set in images) wins."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx

import picofleet
from picofleet.core.buildinfo import build_info, git_commit
from tests.conftest import RunningHub
from tests.release.conftest import ROOT, clean_env


def version_json(**env: str) -> dict[str, object]:
    res = subprocess.run(
        [sys.executable, "-m", "picofleet", "version", "--json"],
        capture_output=True,
        text=True,
        env=clean_env(**env),
        timeout=120,
        check=True,
    )
    data = json.loads(res.stdout)
    assert isinstance(data, dict)
    return data


def test_version_from_a_checkout_names_the_git_commit() -> None:
    data = version_json()
    assert data["version"] == picofleet.__version__
    assert data["commit"] == git_commit(ROOT) and data["commit_source"] == "git"


def test_the_image_commit_overrides() -> None:
    data = version_json(PICOFLEET_COMMIT="0123abcd")
    assert (data["commit"], data["commit_source"]) == ("0123abcd", "env")


async def test_health_reports_version_and_commit(hub: RunningHub) -> None:
    async with httpx.AsyncClient() as client:
        body = (await client.get(f"{hub.http}/health")).json()
    info = build_info()
    assert body["version"] == picofleet.__version__
    assert body["commit"] == info.commit
