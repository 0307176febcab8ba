"""Set-up in the two commands: `make up` installs the runtime only, visibly; `make test`
installs the system packages the tests need (or names the exact command) and lets nothing
skip; `.ci/run` is `make test`."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TEST_DEPS = REPO / "scripts" / "test-deps.sh"


def make_dry_run(target: str, venv: Path) -> str:
    """The commands `make TARGET` would run for a fresh venv (make -n runs nothing)."""
    # Run as a top-level make even when the suite itself runs under `make test`: a nested
    # make prints "Entering directory" lines and inherits the outer one's flags.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    res = subprocess.run(
        ["make", "--no-print-directory", "-n", target, f"VENV={venv}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return res.stdout


def test_make_up_installs_the_runtime_only_with_progress(tmp_path: Path) -> None:
    plan = make_dry_run("up", tmp_path / "venv")
    installs = [ln for ln in plan.splitlines() if "pip install" in ln]
    assert installs and all("[dev]" not in ln for ln in installs), plan
    assert all(" -q" not in ln for ln in installs), plan  # pip's progress stays visible
    assert any(ln.rstrip().endswith("-e .") for ln in installs), plan
    assert "test-deps" not in plan and "npm" not in plan


def test_make_test_installs_system_packages_and_requires_everything(tmp_path: Path) -> None:
    plan = make_dry_run("test", tmp_path / "venv")
    assert plan.splitlines()[0] == "scripts/test-deps.sh", plan
    assert any("'.[dev]'" in ln for ln in plan.splitlines()), plan
    pytest_line = next(ln for ln in plan.splitlines() if "/bin/pytest" in ln)
    assert pytest_line.startswith("PICOFLEET_REQUIRE_ALL=1 "), pytest_line
    ci = (REPO / ".ci" / "run").read_text()
    assert [ln for ln in ci.splitlines() if ln and not ln.startswith("#")][-1] == "make test"


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory an unprivileged user can use (pytest's own temp base is private)."""
    root = Path(tempfile.mkdtemp(prefix="picofleet-setup-"))
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_test_deps_names_the_exact_apt_command(open_dir: Path) -> None:
    """Not root (or no apt): nothing is installed; the missing packages and the command."""
    tmp_path = open_dir
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("id", "apt-get"):
        found = shutil.which(tool)
        assert found is not None, tool
        (bin_dir / tool).symlink_to(found)
    script = tmp_path / TEST_DEPS.name  # the checkout itself may be private (0700)
    shutil.copy(TEST_DEPS, script)
    cmd = [shutil.which("bash") or "/bin/bash", str(script)]
    if os.geteuid() == 0:  # as root it would install: ask as an unprivileged user instead
        cmd = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "nobody", "--", *cmd]
    res = subprocess.run(
        cmd,
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 1, res.stdout + res.stderr
    line = next(ln for ln in res.stderr.splitlines() if "apt-get install" in ln)
    wanted = line.split("--no-install-recommends", 1)[1].split()
    for pkg in ("mosquitto-clients", "nodejs", "npm", "chromium", "chromium-driver", "openssl"):
        assert pkg in wanted, line
    assert line.strip().startswith("sudo apt-get update && sudo apt-get install -y"), line
