"""Building the signed Pi release bundle from a source checkout, reproducibly.

Same source tree and same SOURCE_DATE_EPOCH give a byte-identical wheel, tarball and sha256:

* the source is the checkout's files as git sees them (tracked plus new, never ignored ones),
  copied into a scratch tree with modes 0644/0755, so stray build output cannot leak in;
* the wheel is built there with SOURCE_DATE_EPOCH (zip timestamps) and carries
  ``picofleet/core/build_info.json`` (version, commit);
* the tarball's entries are sorted, mtime SOURCE_DATE_EPOCH, uid/gid 0 with no user names,
  modes 0644/0755; the gzip header has mtime 0 and no file name.

SOURCE_DATE_EPOCH defaults to the commit time of HEAD. ``picofleet-X.Y.Z.tar.gz`` holds one
directory ``picofleet-X.Y.Z/``::

    wheels/picofleet-X.Y.Z-py3-none-any.whl   the hub; sql/ and firmware ship inside it too
    requirements.lock                         pinned runtime dependencies (pip install -r)
    sql/NNNN_*.sql                            migrations
    pico_w/..., pico_usb/...                  firmware sources
    deploy/...                                deploy scripts
    CHANGELOG.md, README.md, compose.yaml, Dockerfile   when present
    BUILD_INFO.json                           version, commit, created_at, firmware
    SHA256SUMS                                ``sha256sum -c`` list of every other file
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from picofleet.core.buildinfo import BUILD_INFO_PATH, firmware_versions, git_commit, git_commit_time
from picofleet.core.firmware import APPS, version_literal
from picofleet.release import changelog
from picofleet.release.signing import (
    META_FILE,
    BundleMeta,
    ReleaseError,
    bundle_name,
    check_version,
    sign_bundle,
)

LOCK_FILE = "release/requirements.lock"
BUILD_CONSTRAINTS = "release/build-constraints.txt"
CHANGELOG = "CHANGELOG.md"
_TOP_LEVEL_FILES = ("CHANGELOG.md", "README.md", "compose.yaml", "Dockerfile")
_TREES = ("sql", *APPS, "deploy")
_JUNK_SUFFIXES = (".pyc", ".mpy")
_GZIP = 9  # compression level


@dataclass(frozen=True, slots=True)
class Built:
    tarball: Path
    meta_path: Path
    wheel: Path
    meta: BundleMeta


@dataclass(frozen=True, slots=True)
class BundleFile:
    data: bytes
    executable: bool


# -- source ------------------------------------------------------------------------------------
def source_files(root: Path) -> list[str]:
    """Paths (relative, posix) of the files git would commit from ``root``'s working tree."""
    listing = ["ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    try:
        res = subprocess.run(
            ["git", "-C", str(root), *listing],
            capture_output=True,
            check=False,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ReleaseError(f"git is needed to list the source files: {exc}") from None
    if res.returncode != 0:
        raise ReleaseError(f"{root} is not a git checkout: {res.stderr.decode().strip()}")
    names = {n for n in res.stdout.decode().split("\0") if n}
    return sorted(n for n in names if (root / n).is_file())


def _junk(rel: str) -> bool:
    return "__pycache__/" in rel or rel.endswith(_JUNK_SUFFIXES)


def stage(root: Path, files: Iterable[str], dest: Path) -> None:
    """Copy ``files`` into ``dest`` with normalised modes (0755 if executable, else 0644)."""
    for rel in files:
        src, dst = root / rel, dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o755 if os.access(src, os.X_OK) else 0o644)


def check_project_version(tree: Path, version: str) -> None:
    """pyproject.toml, picofleet.__version__ and CHANGELOG.md must all name ``version``."""
    declared = tomllib.loads((tree / "pyproject.toml").read_text())["project"]["version"]
    in_code = version_literal((tree / "picofleet" / "__init__.py").read_text())
    if declared != version or in_code != version:
        raise ReleaseError(
            f"releasing {version}, but pyproject.toml says {declared} and "
            f"picofleet/__init__.py says {in_code}: bump both first"
        )
    log = tree / CHANGELOG
    text = log.read_text() if log.is_file() else ""
    if changelog.section(text, version) is None:
        raise ReleaseError(f"{CHANGELOG} has no '## [{version}]' section; write it first")


def iso_utc(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def source_date_epoch(root: Path) -> int:
    env = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if env:
        if not env.isdigit():
            raise ReleaseError(f"SOURCE_DATE_EPOCH={env!r} is not a number of seconds")
        return int(env)
    stamp = git_commit_time(root)
    if stamp is None:
        raise ReleaseError("no commit to date the release: set SOURCE_DATE_EPOCH")
    return stamp


# -- wheel -------------------------------------------------------------------------------------
def build_wheel(tree: Path, out_dir: Path, epoch: int) -> Path:
    """``pip wheel`` the tree with SOURCE_DATE_EPOCH and the pinned build toolchain (the
    constraint reaches pip's isolated build environment through the environment); returns
    the one wheel it wrote."""
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch), PYTHONHASHSEED="0")
    if (tree / BUILD_CONSTRAINTS).is_file():
        env["PIP_CONSTRAINT"] = str(tree / BUILD_CONSTRAINTS)
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out_dir), str(tree)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=600,
    )
    wheels = sorted(out_dir.glob("*.whl"))
    if res.returncode != 0 or len(wheels) != 1:
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-20:])
        raise ReleaseError(f"wheel build failed ({res.returncode}):\n{tail}")
    return wheels[0]


# -- tarball -----------------------------------------------------------------------------------
def write_tarball(dest: Path, prefix: str, files: Mapping[str, BundleFile], epoch: int) -> None:
    """A deterministic .tar.gz of ``files`` under ``prefix/`` (see the module docstring)."""
    dirs = {prefix}
    for rel in files:
        parts = rel.split("/")[:-1]
        dirs.update(f"{prefix}/{'/'.join(parts[: i + 1])}" for i in range(len(parts)))
    entries: list[tuple[str, BundleFile | None]] = [(d, None) for d in dirs]
    entries += [(f"{prefix}/{rel}", f) for rel, f in files.items()]
    with (
        dest.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=_GZIP) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name, entry in sorted(entries, key=lambda e: e[0]):
            info = tarfile.TarInfo(name)
            info.mtime = epoch
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if entry is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.size = len(entry.data)
                info.mode = 0o755 if entry.executable else 0o644
                tar.addfile(info, io.BytesIO(entry.data))


def _read(tree: Path, rel: str) -> BundleFile:
    path = tree / rel
    return BundleFile(path.read_bytes(), os.access(path, os.X_OK))


def bundle_files(
    tree: Path, files: Iterable[str], wheel: Path, build_info: Mapping[str, object]
) -> dict[str, BundleFile]:
    """Every file of the bundle, by path under the top directory."""
    chosen: dict[str, BundleFile] = {}
    for rel in files:
        top = rel.split("/", 1)[0]
        if _junk(rel):
            continue
        if (top in _TREES and "/" in rel) or rel in _TOP_LEVEL_FILES:
            chosen[rel] = _read(tree, rel)
    if not (tree / LOCK_FILE).is_file():
        raise ReleaseError(f"{LOCK_FILE} is missing: run `python release/lock.py`")
    chosen["requirements.lock"] = _read(tree, LOCK_FILE)
    chosen[f"wheels/{wheel.name}"] = BundleFile(wheel.read_bytes(), False)
    chosen["BUILD_INFO.json"] = BundleFile(
        (json.dumps(build_info, indent=2, sort_keys=True) + "\n").encode(), False
    )
    sums = "".join(
        f"{hashlib.sha256(f.data).hexdigest()}  {rel}\n" for rel, f in sorted(chosen.items())
    )
    chosen["SHA256SUMS"] = BundleFile(sums.encode(), False)
    return chosen


def build_bundle(
    root: Path,
    version: str,
    out_dir: Path,
    key: Ed25519PrivateKey,
    *,
    allow_dirty: bool = False,
) -> Built:
    """Build, sign and write ``out_dir/picofleet-X.Y.Z.tar.gz``, ``meta.json`` and the wheel."""
    check_version(version)
    root = root.resolve()
    commit = git_commit(root)
    if commit is None:
        raise ReleaseError(f"{root} is not a git checkout with a commit")
    if commit.endswith("-dirty") and not allow_dirty:
        raise ReleaseError(
            "the working tree has uncommitted changes; commit them, or build a test bundle "
            "with --allow-dirty (make release ALLOW_DIRTY=1)"
        )
    epoch = source_date_epoch(root)
    created_at = iso_utc(epoch)
    files = source_files(root)
    with tempfile.TemporaryDirectory(prefix="picofleet-release-") as scratch:
        tree = Path(scratch) / "src"
        stage(root, files, tree)
        check_project_version(tree, version)
        firmware = firmware_versions(tree)
        info = {"version": version, "commit": commit, "created_at": created_at}
        (tree / BUILD_INFO_PATH).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        os.chmod(tree / BUILD_INFO_PATH, 0o644)
        wheel = build_wheel(tree, Path(scratch) / "wheel", epoch)
        contents = bundle_files(tree, files, wheel, {**info, "firmware": firmware})
        out_dir.mkdir(parents=True, exist_ok=True)
        tarball = out_dir / bundle_name(version)
        tmp = out_dir / f".{tarball.name}.tmp"
        write_tarball(tmp, f"picofleet-{version}", contents, epoch)
        os.replace(tmp, tarball)
        wheel_out = out_dir / wheel.name
        shutil.copyfile(wheel, wheel_out)
    meta = sign_bundle(
        tarball, version=version, key=key, created_at=created_at, commit=commit, firmware=firmware
    )
    meta_path = out_dir / META_FILE
    meta_path.write_text(meta.to_json())
    return Built(tarball=tarball, meta_path=meta_path, wheel=wheel_out, meta=meta)
