"""The embedded PostgreSQL wherever root puts the checkout and the data dir.

Run as root (as CI is), PostgreSQL runs as an unprivileged user that cannot enter a private
(0700) directory: root's home, any ``mktemp -d``. The cluster and the binaries must still
work there, with nothing chmod-ed; and the cluster keeps its port across restarts."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from picofleet.core.pgembed import (
    PG_SUBDIR,
    SHARED_ROOT,
    EmbeddedPostgres,
    PostgresUnavailable,
    find_bindir,
)
from tests.helpers import free_port, read_banner

REPO = Path(__file__).resolve().parents[2]
# Run inside the private checkout: the session's cluster, the hub over HTTP, one-shot CLIs.
SLICE = ("tests/hub/test_http_ingest.py", "tests/hub/test_cli_up.py::test_creds_and_migrate")


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A directory only its owner may enter, like root's home or ``mktemp -d``."""
    root = Path(tempfile.mkdtemp(prefix="picofleet-private-"))
    assert root.stat().st_mode & 0o777 == 0o700
    yield root
    for data in root.rglob(PG_SUBDIR):
        if (data / "PG_VERSION").exists() or data.is_symlink():
            EmbeddedPostgres(data.parent).stop()
        if data.is_symlink():  # a relocated cluster: its home under SHARED_ROOT goes too
            shutil.rmtree(data.resolve().parent, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)


async def select_one(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT 1"))
    finally:
        await conn.close()


def test_restart_keeps_the_port(hub_data: Path) -> None:
    pg = EmbeddedPostgres(hub_data)
    try:
        first = pg.start()
        pg.stop()
        again = EmbeddedPostgres(hub_data)
        assert again.start() == first  # same port, same password: a saved URL still works
        assert asyncio.run(select_one(first)) == 1
        again.stop()

        # The kept port taken by another program: a clear error, not a silent new port.
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
            s.bind(("127.0.0.1", again.recorded_port or 0))
            s.listen()
            with pytest.raises(PostgresUnavailable, match=r"in use.*--pg-port"):
                EmbeddedPostgres(hub_data).start()
    finally:
        EmbeddedPostgres(hub_data).stop()


def test_private_data_dir(private_dir: Path) -> None:
    data = private_dir / "data"
    data.mkdir(mode=0o700)
    pg = EmbeddedPostgres(data)
    url = pg.start()
    assert asyncio.run(select_one(url)) == 1
    # Nothing was opened up: the private dirs keep their modes; no password file is left.
    assert private_dir.stat().st_mode & 0o777 == 0o700
    assert data.stat().st_mode & 0o777 == 0o700
    assert not list(data.glob(".initpw*"))
    if os.geteuid() == 0:
        link = data / PG_SUBDIR
        assert link.is_symlink() and SHARED_ROOT in link.resolve().parents
        assert not list(link.resolve().parent.glob(".initpw*"))
    pg.stop()
    assert EmbeddedPostgres(data).start() == url  # found again through the data dir
    EmbeddedPostgres(data).stop()


def copy_checkout(dest: Path) -> None:
    """The working tree's tracked files (uncommitted edits included), as a clone would be."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = REPO / name.decode()
        if src.is_file():
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name.decode())


def private_env(site: Path, clone: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICOFLEET_")}
    # The clone and its own pgserver come first (an installed picofleet is only a fallback).
    env.update(PYTHONPATH=f"{clone}{os.pathsep}{site}", **extra)
    return env


def test_up_and_the_suite_from_a_private_checkout(private_dir: Path) -> None:
    """A checkout and a data dir under 0700 parents: `up` becomes ready and stores what a
    device sends, and a slice of the suite passes there, nothing skipped."""
    clone, site = private_dir / "picofleet", private_dir / "site"
    copy_checkout(clone)
    bindir = find_bindir()
    if bindir.parent.name == "pginstall":  # the wheel's binaries, copied under the 0700 dir
        package = bindir.parent.parent
        shutil.copytree(package, site / package.name, symlinks=True)
        libs = package.with_name(f"{package.name}.libs")
        if libs.is_dir():
            shutil.copytree(libs, site / libs.name, symlinks=True)
    data = Path(tempfile.mkdtemp(dir=private_dir))
    mqtt_port, http_port = free_port(), free_port()
    env = private_env(site, clone, PICOFLEET_LOG_LEVEL="WARNING")
    cmd = [sys.executable, "-m", "picofleet"]
    ports = ["--mqtt-port", str(mqtt_port), "--http-port", str(http_port)]
    proc = subprocess.Popen(
        [*cmd, "up", "--data-dir", str(data), *ports],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = read_banner(proc, 120)

        def run(*args: str) -> str:
            res = subprocess.run(
                [*cmd, *args, "--data-dir", str(data)],
                cwd=clone,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert res.returncode == 0, res.stdout + res.stderr
            return res.stdout

        out = run("simulate", "--devices", "1", "--rate", "5", "--duration", "1", "--json")
        sent = json.loads(out.strip().splitlines()[-1])
        assert sent["sent"] > 0 and sent["acked"] == sent["sent"]
        url = run("db", "url").strip()

        async def stored() -> int:
            conn = await asyncpg.connect(url)
            try:
                return int(await conn.fetchval("SELECT count(*) FROM raw_record"))
            finally:
                await conn.close()

        assert asyncio.run(stored()) == sent["sent"]
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, "".join(lines) + rest

    suite = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *SLICE,
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        cwd=clone,
        env=private_env(site, clone, PICOFLEET_REQUIRE_ALL="1"),  # nothing may skip
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    summary = suite.stdout.strip().splitlines()[-1] if suite.stdout.strip() else ""
    assert suite.returncode == 0, suite.stdout[-3000:] + suite.stderr[-2000:]
    assert "passed" in summary and "skipped" not in summary, summary
