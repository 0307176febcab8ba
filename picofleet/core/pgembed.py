"""A private PostgreSQL cluster in the data dir, for the embedded hub and for tests.

Binaries come from the ``pgserver`` wheel where one exists for the platform, else from the
system's ``initdb``/``pg_ctl``. The server listens on 127.0.0.1 and a socket in the cluster
dir, with a generated password (scram) for the ``picofleet`` owner role, on a port chosen
free the first time and kept (``postgres.port``) so saved URLs survive restarts.

PostgreSQL refuses to run as root, so as root the cluster belongs to an unprivileged system
user, which must reach the binaries and the cluster's files. Where it cannot (the checkout
or the data dir under a private parent: root's home, ``mktemp -d``), nothing is chmod-ed:
the wheel's binaries are copied once to ``/var/lib/picofleet/pginstall`` and the cluster
lives under ``/var/lib/picofleet/clusters``, linked from the data dir as ``postgres``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import importlib.util
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from picofleet.core import logs
from picofleet.core.files import replace_file

PG_SUBDIR = "postgres"
PASSWORD_FILE = "postgres.password"
PORT_FILE = "postgres.port"
OWNER = "picofleet"
DATABASE = "picofleet"
_ROOT_RUN_AS = ("postgres", "pgserver", "nobody")
# Where root keeps what the cluster's user must reach when the checkout or data dir cannot.
SHARED_ROOT = Path("/var/lib/picofleet")
OWNER_RECORD = "data_dir"  # in a relocated cluster's home: the data dir that links to it


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries, or the cluster would not start."""


class NoCluster(PostgresUnavailable):
    """The data dir has no cluster and the caller must not create one."""


def find_bindir() -> Path:
    # Locate the pgserver wheel's binaries without importing it (its import has side effects).
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        bundled = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
        if (bundled / "pg_ctl").exists():
            return bundled
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve().parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "pg_ctl").exists():
            return Path(candidate)
    raise PostgresUnavailable(
        "no PostgreSQL found: install the 'pgserver' wheel (pip install pgserver, x86_64/macOS) "
        "or the system server (apt install postgresql, for initdb and pg_ctl), or set "
        "PICOFLEET_DATABASE_URL to an existing server"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def _run_as_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in _ROOT_RUN_AS:
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise PostgresUnavailable("running as root and no unprivileged user to run PostgreSQL as")


def reachable(user: str, path: Path) -> bool:
    """Whether ``user`` can search (directory) or execute (file) ``path``: asked of the
    kernel as that user, so every parent's mode, owner and ACL counts."""
    res = subprocess.run(
        ["runuser", "-u", user, "--", "test", "-x", str(path)], capture_output=True, check=False
    )
    return res.returncode == 0


def _shared_dir(path: Path) -> Path:
    """A root-owned directory every user can traverse (search permission for all)."""
    path.mkdir(parents=True, exist_ok=True)
    for p in (SHARED_ROOT, path):
        mode = p.stat().st_mode & 0o7777
        if mode & 0o011 != 0o011:
            os.chmod(p, mode | 0o011)
    return path


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _readable_by_all(tree: Path) -> None:
    """a+rX over ``tree``: read for all, and search/execute where the owner has it."""
    for path in (tree, *tree.rglob("*")):
        if path.is_symlink():
            continue
        mode = path.stat().st_mode & 0o7777
        extra = 0o444 | (0o111 if path.is_dir() or mode & 0o100 else 0)
        os.chmod(path, mode | extra)


def usable_bindir(bindir: Path, user: str | None) -> Path:
    """``bindir``, or a copy of the wheel's install tree the cluster's user can run."""
    if user is None or reachable(user, bindir / "pg_ctl"):
        return bindir
    install = bindir.parent
    if install.name != "pginstall":  # a system install: its share/ and lib/ are elsewhere
        raise PostgresUnavailable(
            f"user {user} cannot run {bindir / 'pg_ctl'}: a parent directory is private. "
            f"Fix: make the PostgreSQL install reachable (chmod o+x on its parents) or "
            f"install the system server (apt install postgresql)"
        )
    # Keyed by the build's content (not its path or mtime): every checkout and reinstall of
    # one wheel shares a copy.
    digest = hashlib.sha256()
    for exe in ("pg_ctl", "postgres"):
        with open(bindir / exe, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    key = digest.hexdigest()[:16]
    home = _shared_dir(SHARED_ROOT / "pginstall")
    dest = home / key
    # The wheel's layout is kept (pgserver/pginstall beside pgserver.libs): its binaries
    # find their shared libraries by an RPATH relative to themselves.
    package = install.parent
    rel_bindir = Path(package.name, install.name, bindir.name)
    if not (dest / rel_bindir / "pg_ctl").exists():
        # Copied aside, then renamed: a reader sees the whole tree or none of it.
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=home))
        try:
            tree = tmp / "t"
            shutil.copytree(install, tree / package.name / install.name, symlinks=True)
            libs = package.with_name(f"{package.name}.libs")
            if libs.is_dir():
                shutil.copytree(libs, tree / libs.name, symlinks=True)
            _readable_by_all(tree)  # whatever the umask the venv was installed with
            try:
                os.rename(tree, dest)
            except OSError:
                if not (dest / rel_bindir / "pg_ctl").exists():
                    raise  # not a concurrent copy that won: a real failure
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logs.get("picofleet.core.pgembed").info(
            "postgres.binaries_copied", source=str(install), to=str(dest), reason="private parent"
        )
    return dest / rel_bindir


def _sweep_clusters(clusters: Path) -> None:
    """Remove relocated clusters of temporary data dirs that are gone (test runs, mktemp -d),
    never one a data dir still links to, one that may be running, or one of a data dir
    outside the temp dir (a production data dir may have been moved)."""
    tmp_root = Path(tempfile.gettempdir()).resolve()
    for home in clusters.iterdir():
        if home.name.startswith(".") or not home.is_dir():
            continue
        try:
            owner = Path((home / OWNER_RECORD).read_text().strip())
        except OSError:
            continue
        if owner.exists() or tmp_root not in owner.parents:
            continue
        if (home / "pgdata" / "postmaster.pid").exists():
            continue
        shutil.rmtree(home, ignore_errors=True)
        logs.get("picofleet.core.pgembed").info(
            "postgres.swept", path=str(home), data_dir=str(owner)
        )


@dataclass
class EmbeddedPostgres:
    """Owns one cluster directory: init on first use, start, stop."""

    root: Path
    port: int | None = None

    def __post_init__(self) -> None:
        self.root = self.root.resolve()
        link = self.root / PG_SUBDIR
        # A relocated cluster is reached through its real path: its user cannot follow a
        # link inside the data dir it cannot enter.
        self.pgdata = link.resolve() if link.is_symlink() else link
        self.bindir = find_bindir()
        self.user = _run_as_user()
        self._exec_bindir: Path | None = None
        self._log = logs.get("picofleet.core.pgembed")
        self._started_here = False

    # -- helpers ---------------------------------------------------------------------------
    def _cmd(self, exe: str, *args: str) -> list[str]:
        if self._exec_bindir is None:
            self._exec_bindir = usable_bindir(self.bindir, self.user)
        cmd = [str(self._exec_bindir / exe), *args]
        if self.user:
            return ["runuser", "-u", self.user, "--", *cmd]
        return cmd

    def _chown(self, path: Path) -> None:
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    @property
    def password(self) -> str:
        return (self.root / PASSWORD_FILE).read_text().strip()

    @property
    def socket_dir(self) -> Path:
        return self.pgdata

    @property
    def initialised(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    @property
    def recorded_port(self) -> int | None:
        try:
            return int((self.root / PORT_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def url(self, database: str = DATABASE) -> str:
        port = self.port or self.recorded_port
        return f"postgresql://{OWNER}:{quote(self.password, safe='')}@127.0.0.1:{port}/{database}"

    def _relocate(self) -> Path:
        """A home for the cluster that its user can reach, linked from the data dir."""
        assert self.user is not None
        clusters = _shared_dir(SHARED_ROOT / "clusters")
        with _locked(clusters / ".lock"):
            _sweep_clusters(clusters)
            home = Path(tempfile.mkdtemp(prefix="pg-", dir=clusters))
            os.chmod(home, 0o711)
            replace_file(home / OWNER_RECORD, f"{self.root}\n", mode=0o644)
            pgdata = home / "pgdata"
            pgdata.mkdir(mode=0o700)
            self._chown(pgdata)
            (self.root / PG_SUBDIR).symlink_to(pgdata)
        self._log.warning(
            "postgres.relocated",
            path=str(pgdata),
            reason=f"user {self.user} cannot reach {self.root}",
        )
        return pgdata

    @contextlib.contextmanager
    def _password_file(self) -> Iterator[Path]:
        """The owner's password in a file only the cluster's user can read, for initdb (a
        pipe will not do: the user may not reopen root's /dev/stdin)."""
        home = Path(tempfile.mkdtemp(prefix=".initpw-", dir=self.pgdata.parent))
        try:
            self._chown(home)
            path = home / "pw"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.password)
            self._chown(path)
            yield path
        finally:
            shutil.rmtree(home, ignore_errors=True)

    def _check_reachable(self) -> None:
        if self.user and not reachable(self.user, self.pgdata):
            raise PostgresUnavailable(
                f"user {self.user} (PostgreSQL refuses root) cannot reach the cluster at "
                f"{self.pgdata}: a parent directory is private. Fix: chmod o+x on the parents "
                f"of {self.pgdata}, or move the data dir under a directory it can enter"
            )

    # -- lifecycle -------------------------------------------------------------------------
    def init(self) -> None:
        if self.initialised:
            return
        link = self.root / PG_SUBDIR
        if link.is_symlink():
            raise PostgresUnavailable(
                f"{link} points to {self.pgdata}, which holds no cluster (removed?); "
                f"remove {link} to start an empty one"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        pw_file = self.root / PASSWORD_FILE
        if not pw_file.exists():
            fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24))
        if self.user and not reachable(self.user, self.root):
            self.pgdata = self._relocate()
        else:
            self.pgdata.mkdir(mode=0o700, exist_ok=True)
            self._chown(self.pgdata)
        with self._password_file() as pw:
            self._check(
                self._cmd(
                    "initdb",
                    "-D",
                    str(self.pgdata),
                    "-U",
                    OWNER,
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    f"--pwfile={pw}",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ),
                "initdb",
            )
        self._log.info("postgres.initialised", pgdata=str(self.pgdata))

    def _check(self, cmd: list[str], what: str) -> str:
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise PostgresUnavailable(f"{what} failed ({res.returncode}): {res.stderr.strip()}")
        return res.stdout

    def running(self) -> bool:
        if not self.initialised:
            return False
        res = subprocess.run(
            self._cmd("pg_ctl", "status", "-D", str(self.pgdata)),
            capture_output=True,
            check=False,
        )
        return res.returncode == 0

    def start(self, *, create: bool = True) -> str:
        """Start (or adopt a running) cluster, make sure the database exists, return its URL.

        ``create=False``: a data dir without a cluster raises NoCluster, creating nothing."""
        if not create and not self.initialised:
            raise NoCluster(f"no embedded PostgreSQL cluster in {self.root}")
        self.init()
        self._check_reachable()
        recorded = self.recorded_port
        if self.running():
            self.port = recorded
            self._log.info("postgres.adopted", port=self.port)
        else:
            # Same port as last time, so a saved `db url` or psql alias keeps working.
            self.port = self.port or recorded or _free_port()
            if not _port_free(self.port):
                raise PostgresUnavailable(
                    f"port {self.port} of the embedded PostgreSQL ({self.root / PORT_FILE}) is "
                    "in use by another program; stop it, or choose another port with "
                    "--pg-port (PICOFLEET_PG_PORT)"
                )
            if self.port != recorded:
                replace_file(self.root / PORT_FILE, str(self.port), mode=0o644)
            opts = (
                f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
                "-c fsync=on -c max_connections=100 -c shared_buffers=128MB"
            )
            self._check(
                self._cmd(
                    "pg_ctl",
                    "start",
                    "-D",
                    str(self.pgdata),
                    "-w",
                    "-t",
                    "60",
                    "-l",
                    str(self.pgdata / "server.log"),
                    "-o",
                    opts,
                ),
                "pg_ctl start",
            )
            self._started_here = True
            self._log.info("postgres.started", port=self.port)
        self.ensure_database(DATABASE)
        return self.url()

    def psql(self, sql: str, database: str = "postgres") -> str:
        return self._check(
            self._cmd(
                "psql",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                OWNER,
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-Atc",
                sql,
            ),
            "psql",
        )

    def ensure_database(self, name: str) -> None:
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'")
        if not exists.strip():
            self.psql(f'CREATE DATABASE "{name}"')

    def stop(self) -> None:
        if not self.running():
            return
        subprocess.run(
            self._cmd("pg_ctl", "stop", "-D", str(self.pgdata), "-m", "fast", "-w"),
            capture_output=True,
            check=False,
        )
        self._log.info("postgres.stopped")
