"""A private PostgreSQL cluster in the data dir, for the embedded hub and for tests.

Binaries come from the ``pgserver`` wheel where one exists for the platform, else from the
system's ``initdb``/``pg_ctl``. The server listens on 127.0.0.1 and a socket in the cluster
dir, with a generated password (scram) for the ``picofleet`` owner role. PostgreSQL refuses to
run as root, so as root the cluster belongs to an unprivileged system user.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import secrets
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from picofleet import logs

PG_SUBDIR = "postgres"
PASSWORD_FILE = "postgres.password"
PORT_FILE = "postgres.port"
OWNER = "picofleet"
DATABASE = "picofleet"
_ROOT_RUN_AS = ("postgres", "pgserver", "nobody")


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries, or the cluster would not start."""


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


@dataclass
class EmbeddedPostgres:
    """Owns one cluster directory: init on first use, start, stop."""

    root: Path
    port: int | None = None

    def __post_init__(self) -> None:
        self.root = self.root.resolve()
        self.pgdata = self.root / PG_SUBDIR
        self.bindir = find_bindir()
        self.user = _run_as_user()
        self._log = logs.get("picofleet.pgembed")
        self._started_here = False

    # -- helpers ---------------------------------------------------------------------------
    def _cmd(self, exe: str, *args: str) -> list[str]:
        cmd = [str(self.bindir / exe), *args]
        if self.user:
            return ["runuser", "-u", self.user, "--", *cmd]
        return cmd

    def _ensure_traversable(self) -> None:
        """As root, the cluster's user must be able to reach the data dir: grant search (x,
        not read) on parents that lack it, as pgserver does, and say so."""
        if not self.user:
            return
        for parent in reversed(self.root.parents):
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)
                self._log.warning(
                    "postgres.granted_traverse",
                    path=str(parent),
                    reason=f"user {self.user} must reach the data dir",
                )

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

    def url(self, database: str = DATABASE) -> str:
        port = self.port or int((self.root / PORT_FILE).read_text())
        return f"postgresql://{OWNER}:{quote(self.password, safe='')}@127.0.0.1:{port}/{database}"

    # -- lifecycle -------------------------------------------------------------------------
    def init(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self._ensure_traversable()
        pw_file = self.root / PASSWORD_FILE
        if not pw_file.exists():
            fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24))
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        self._chown(self.pgdata)
        # initdb reads the password from a file it can open as the cluster's user.
        tmp_pw = self.root / ".initpw"
        tmp_pw.write_text(self.password)
        self._chown(tmp_pw)
        try:
            self._check(
                self._cmd(
                    "initdb",
                    "-D",
                    str(self.pgdata),
                    "-U",
                    OWNER,
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    f"--pwfile={tmp_pw}",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ),
                "initdb",
            )
        finally:
            tmp_pw.unlink(missing_ok=True)
        self._log.info("postgres.initialised", pgdata=str(self.pgdata))

    def _check(self, cmd: list[str], what: str) -> str:
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise PostgresUnavailable(f"{what} failed ({res.returncode}): {res.stderr.strip()}")
        return res.stdout

    def running(self) -> bool:
        res = subprocess.run(
            self._cmd("pg_ctl", "status", "-D", str(self.pgdata)),
            capture_output=True,
            check=False,
        )
        return res.returncode == 0

    def start(self) -> str:
        """Start (or adopt a running) cluster, make sure the database exists, return its URL."""
        self.init()
        self._ensure_traversable()
        if self.running():
            self.port = int((self.root / PORT_FILE).read_text())
            self._log.info("postgres.adopted", port=self.port)
        else:
            self.port = self.port or _free_port()
            (self.root / PORT_FILE).write_text(str(self.port))
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
