"""Release tests share their expensive parts per session: a committed snapshot of the source
tree (so edits made meanwhile cannot change a build, and no --allow-dirty is needed), a
release key, two bundles built from the snapshot, and a clean venv with the bundle's wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import picofleet
from picofleet.release.bundle import Built, build_bundle, source_files, stage
from picofleet.release.signing import (
    META_FILE,
    BundleMeta,
    bundle_name,
    generate_key,
    load_private_key,
    public_path_for,
)

ROOT = Path(__file__).resolve().parents[2]
VERSION = picofleet.__version__
EPOCH = 1_767_225_600  # 2026-01-01T00:00:00Z, the snapshot commit's time
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "release-test",
    "GIT_AUTHOR_EMAIL": "release-test@localhost",
    "GIT_COMMITTER_NAME": "release-test",
    "GIT_COMMITTER_EMAIL": "release-test@localhost",
    "GIT_AUTHOR_DATE": f"@{EPOCH} +0000",
    "GIT_COMMITTER_DATE": f"@{EPOCH} +0000",
}


def git(repo: Path, *args: str) -> str:
    res = subprocess.run(
        ["git", "-C", str(repo), "-c", "commit.gpgsign=false", *args],
        env={**os.environ, **_GIT_ENV},
        capture_output=True,
        text=True,
        check=True,
    )
    return res.stdout.strip()


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would change a build or hide the installed
    package (a fixed SOURCE_DATE_EPOCH, a commit override, a source path)."""
    drop = {"SOURCE_DATE_EPOCH", "PICOFLEET_COMMIT", "PYTHONPATH", "PICOFLEET_RELEASE_KEY"}
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


@dataclass(frozen=True)
class Bundles:
    first: Built  # built by release/build_bundle.py, as `make release` runs it
    second: Built  # built in-process from the same snapshot
    key: Path
    pubkey: Path
    commit: str


@pytest.fixture(scope="session")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("snapshot") / "picofleet"
    stage(ROOT, source_files(ROOT), dest)
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "snapshot")
    return dest


@pytest.fixture(scope="session")
def bundles(snapshot: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    key = tmp_path_factory.mktemp("key") / "release.key"
    generate_key(key)
    out1, out2 = tmp_path_factory.mktemp("bundle1"), tmp_path_factory.mktemp("bundle2")
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "release" / "build_bundle.py"),
            "--version",
            VERSION,
            "--source",
            str(snapshot),
            "--out",
            str(out1),
        ],
        env=clean_env(PICOFLEET_RELEASE_KEY=str(key)),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    first = Built(
        tarball=out1 / bundle_name(VERSION),
        meta_path=out1 / META_FILE,
        wheel=out1 / f"picofleet-{VERSION}-py3-none-any.whl",
        meta=BundleMeta.load(out1 / META_FILE),
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("SOURCE_DATE_EPOCH", raising=False)
        second = build_bundle(snapshot, VERSION, out2, load_private_key(key))
    return Bundles(first, second, key, public_path_for(key), git(snapshot, "rev-parse", "HEAD"))


@pytest.fixture(scope="session")
def wheel_venv(bundles: Bundles) -> Iterator[Path]:
    """A fresh venv with the bundle's wheel and its requirements.lock installed (not
    editable), as deploy.sh installs them on a Pi."""
    # The embedded PostgreSQL runs its binaries from this venv as another user: outside
    # pytest's temp base, which is 0700.
    base = Path(tempfile.mkdtemp(prefix="picofleet-test-venv-"))
    os.chmod(base, 0o755)
    unpacked = base / "bundle"
    with tarfile.open(bundles.first.tarball) as tar:
        # Our own tarball; the "data" filter where this Python has it (3.11.4+).
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(unpacked, **safe)  # type: ignore[arg-type]
    top = unpacked / f"picofleet-{VERSION}"
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    res = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "-r",
            str(top / "requirements.lock"),
            str(top / "wheels" / bundles.first.wheel.name),
        ],
        env=clean_env(),
        cwd=base,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    yield venv
    shutil.rmtree(base, ignore_errors=True)
