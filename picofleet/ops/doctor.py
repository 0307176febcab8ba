"""``picofleet doctor``: pre-flight checks, one line each, with the fix when one fails.

    ok    fleet-secret  from PICOFLEET_PROVISION_SECRET
    FAIL  database      cannot connect to postgresql://picofleet@127.0.0.1:5432/picofleet: ...
          fix: start PostgreSQL or correct PICOFLEET_DATABASE_URL

Ports: with an explicit ``--mqtt``/``--http`` (or PICOFLEET_MQTT_URL) the service must answer;
otherwise a free port is fine (``picofleet up`` will take it) and a port held by something
that is not this hub is a failure.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import stat
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from picofleet.core import db
from picofleet.core.credentials import (
    HUB_USER,
    OPERATOR_USER,
    SECRET_FILE,
    FleetKeys,
    load_fleet_secret,
)
from picofleet.core.endpoints import local_http_url
from picofleet.core.mqttclient import ConnectFailed, MqttTarget, hub_target, probe
from picofleet.core.settings import Settings, mqtt_endpoint
from picofleet.core.tls import TlsError, client_context, trusted_ca

SANE_EPOCH = 1_704_067_200  # 2024-01-01: a clock before this was never set (no RTC on a Pi)
DISK_FAIL_BYTES = 256 * 1024**2
DISK_WARN_BYTES = 1024**3
CLOCK_WARN_S = 5.0
CLOCK_FAIL_S = 60.0
TIMEOUT_S = 5.0


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"
    SKIP = "skip"


@dataclass
class Result:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self, width: int = 13) -> str:
        out = f"{self.status.value:<5} {self.name:<{width}} {self.detail}"
        if self.fix and self.status in (Status.FAIL, Status.WARN):
            out += f"\n{'':<{width + 6}}fix: {self.fix}"
        return out


@dataclass
class Target:
    """What doctor looks at; ``expect_*`` means the service must already be running."""

    settings: Settings
    mqtt_host: str
    mqtt_port: int
    expect_mqtt: bool
    http_url: str
    expect_http: bool
    skip: frozenset[str] = frozenset()
    mqtt_ca: Path | None = None  # the hub's CA when its broker speaks TLS
    http_ca: Path | None = None  # the CA an https:// hub must chain to


def target_for(
    settings: Settings,
    *,
    mqtt: str | None = None,
    http: str | None = None,
    skip: frozenset[str] = frozenset(),
) -> Target:
    try:  # hub and operator credentials: the hub's listener
        mq = hub_target(settings, device=False, url=mqtt)
    except TlsError:  # no CA yet (no hub started here): the plain loopback listener
        host, port = mqtt_endpoint(mqtt or settings.mqtt_url or f"127.0.0.1:{settings.mqtt_port}")
        mq = MqttTarget(host, port)
    return Target(
        settings=settings,
        mqtt_host=mq.host,
        mqtt_port=mq.port,
        mqtt_ca=mq.ca,
        expect_mqtt=mqtt is not None or bool(settings.mqtt_url),
        http_url=(http or local_http_url(settings)).rstrip("/"),
        http_ca=trusted_ca(settings),
        expect_http=http is not None,
        skip=skip,
    )


def redact(url: str) -> str:
    """A database URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc}" if user else netloc))


# -- individual checks -------------------------------------------------------------------------
def check_secret(t: Target) -> tuple[Result, FleetKeys | None]:
    s = t.settings
    if s.provision_secret is not None:
        keys = FleetKeys(load_fleet_secret(s, create=False))
        return Result("fleet-secret", Status.OK, "from PICOFLEET_PROVISION_SECRET"), keys
    path = s.data_path / SECRET_FILE
    if not path.exists():
        return (
            Result(
                "fleet-secret",
                Status.FAIL,
                f"no fleet secret: {path} is missing and PICOFLEET_PROVISION_SECRET is unset",
                "run `picofleet up` once (it creates one) or set PICOFLEET_PROVISION_SECRET; "
                "every device's credentials derive from it, so restore the old one if it existed",
            ),
            None,
        )
    mode = stat.S_IMODE(path.stat().st_mode)
    keys = FleetKeys(load_fleet_secret(s, create=False))
    if mode & 0o077:
        return (
            Result(
                "fleet-secret",
                Status.FAIL,
                f"{path} is readable by others (mode {mode:o})",
                f"chmod 600 {path}",
            ),
            keys,
        )
    return Result("fleet-secret", Status.OK, f"{path} (mode 600)"), keys


def check_signing_key(t: Target) -> Result:
    try:
        from picofleet.core import signing as ota_keys
    except ImportError:
        return Result("signing-key", Status.SKIP, "OTA is not installed in this build")
    private, _ = ota_keys.key_paths(t.settings.data_path)
    try:
        signer = ota_keys.load_signer(t.settings.data_path)
    except Exception as exc:  # NoSigningKey, or a key file that does not parse
        fix = "run `picofleet keys init`" if not private.exists() else f"check {private}"
        if private.exists() and "readable" in str(exc):
            fix = f"chmod 600 {private}"
        return Result("signing-key", Status.FAIL, str(exc), fix)
    return Result("signing-key", Status.OK, f"{private} (key id {signer.key_id})")


def check_disk(t: Target) -> Result:
    path: Path = t.settings.data_path
    while not path.exists() and path != path.parent:
        path = path.parent
    usage = shutil.disk_usage(path)
    free_mib = usage.free // 1024**2
    detail = f"{free_mib} MiB free of {usage.total // 1024**2} MiB at {path}"
    fix = "free space (old releases, journal: journalctl --vacuum-size=100M) or move the data dir"
    if usage.free < DISK_FAIL_BYTES:
        return Result("disk", Status.FAIL, detail, fix)
    if usage.free < DISK_WARN_BYTES:
        return Result("disk", Status.WARN, detail, fix)
    return Result("disk", Status.OK, detail)


def _ntp_synced() -> bool | None:
    exe = shutil.which("timedatectl")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "show", "-p", "NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=3,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = out.stdout.strip()
    return None if out.returncode != 0 or not value else value == "yes"


def check_clock(db_now: float | None) -> Result:
    now = time.time()
    fix = "enable NTP (timedatectl set-ntp true) and wait for sync; a Pi has no RTC"
    if now < SANE_EPOCH:
        return Result("clock", Status.FAIL, f"system clock reads {time.ctime(now)}", fix)
    detail = f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(now))} UTC"
    if db_now is not None:
        skew = now - db_now
        detail += f", {skew:+.1f} s from the database server"
        if abs(skew) > CLOCK_FAIL_S:
            return Result("clock", Status.FAIL, detail, fix + " on both hosts")
        if abs(skew) > CLOCK_WARN_S:
            return Result("clock", Status.WARN, detail, fix + " on both hosts")
    if _ntp_synced() is False:
        return Result("clock", Status.WARN, detail + ", NTP not synchronised", fix)
    return Result("clock", Status.OK, detail)


async def check_database(t: Target) -> tuple[list[Result], float | None]:
    """Reachable, migrated; returns the server's clock for the skew check."""
    s = t.settings
    url = s.database_url
    if url is None:
        from picofleet.core.pgembed import EmbeddedPostgres, PostgresUnavailable

        try:
            pg = EmbeddedPostgres(s.data_path)
        except PostgresUnavailable as exc:
            return [Result("database", Status.FAIL, str(exc), "apt install postgresql")], None
        if not await asyncio.to_thread(pg.running):
            return [
                Result(
                    "database",
                    Status.OK,
                    f"embedded PostgreSQL ({pg.bindir}) in {pg.pgdata}, not running; "
                    "`picofleet up` starts it",
                ),
                Result("migrations", Status.SKIP, "applied by `picofleet up` at start"),
            ], None
        url = pg.url()
    shown = redact(url)
    try:
        conn = await asyncpg.connect(url, timeout=TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return [
            Result(
                "database",
                Status.FAIL,
                f"cannot connect to {shown}: {exc}",
                "start PostgreSQL or correct PICOFLEET_DATABASE_URL",
            ),
            Result("migrations", Status.SKIP, "database unreachable"),
        ], None
    try:
        row = await conn.fetchrow("SELECT current_setting('server_version') AS v, now() AS now")
        assert row is not None
        db_now = row["now"].timestamp()
    finally:
        await conn.close()
    results = [Result("database", Status.OK, f"{shown} (PostgreSQL {row['v']})")]
    results.append(await _check_migrations(url))
    return results, db_now


async def _check_migrations(url: str) -> Result:
    try:
        pending = await db.pending(url)
    except (OSError, asyncpg.PostgresError) as exc:
        return Result("migrations", Status.FAIL, f"cannot read schema_migration: {exc}")
    known = {m.version for m in db.migrations()}
    conn = await asyncpg.connect(url, timeout=TIMEOUT_S)
    try:
        applied = set()
        if await conn.fetchval("SELECT to_regclass('schema_migration') IS NOT NULL"):
            applied = {r[0] for r in await conn.fetch("SELECT version FROM schema_migration")}
    finally:
        await conn.close()
    if pending:
        return Result(
            "migrations",
            Status.FAIL,
            f"{len(pending)} pending: {', '.join(pending)}",
            "picofleet db migrate",
        )
    newer = sorted(applied - known)
    if newer:
        return Result(
            "migrations",
            Status.WARN,
            f"the database has migrations this release does not know: {', '.join(newer)}",
            "expected right after a rollback (schema changes are additive); otherwise upgrade",
        )
    return Result("migrations", Status.OK, f"all {len(known)} applied")


def check_mqtt(t: Target, keys: FleetKeys | None) -> Result:
    where = f"{t.mqtt_host}:{t.mqtt_port}"
    if keys is None:
        return Result("mqtt", Status.SKIP, f"{where}: no fleet secret to derive credentials")
    try:
        for user in (HUB_USER, OPERATOR_USER):
            target = MqttTarget(t.mqtt_host, t.mqtt_port, t.mqtt_ca)
            probe(target, user, keys.role_password(user), TIMEOUT_S)
    except ConnectFailed as exc:
        if exc.refused:
            return Result(
                "mqtt",
                Status.FAIL,
                f"broker at {where} refused the {user} credentials ({exc.reason})",
                "the broker's password file was made with another fleet secret, or another "
                "broker holds the port: regenerate it (`picofleet broker config`) and reload "
                "the broker, or check PICOFLEET_PROVISION_SECRET",
            )
        if not t.expect_mqtt:
            return Result(
                "mqtt", Status.OK, f"{where} is free; `picofleet up` runs the broker there"
            )
        return Result(
            "mqtt",
            Status.FAIL,
            f"broker unreachable: {exc.reason}",
            "start the broker (systemctl start mosquitto / docker compose up -d mosquitto) "
            "or correct PICOFLEET_MQTT_URL",
        )
    return Result("mqtt", Status.OK, f"{where} accepts the hub and operator credentials")


def _tls(t: Target) -> ssl.SSLContext | None:
    return None if t.http_ca is None else client_context(t.http_ca)


def check_http(t: Target) -> Result:
    url = t.http_url
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=TIMEOUT_S, context=_tls(t)) as r:
            body = json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return Result(
            "http",
            Status.FAIL,
            f"{url}/health answered {exc.code}: not this hub",
            "stop whatever holds the port or set PICOFLEET_HTTP_PORT",
        )
    except (OSError, ValueError) as exc:
        if not t.expect_http and isinstance(getattr(exc, "reason", exc), ConnectionRefusedError):
            return Result("http", Status.OK, f"{url} is free; the hub will listen there")
        return Result(
            "http",
            Status.FAIL,
            f"no hub at {url}: {getattr(exc, 'reason', exc)}",
            "start it (systemctl start picofleet) or pass the right --http URL",
        )
    if body.get("status") != "ok":
        return Result("http", Status.FAIL, f"{url}/health: {body}", "see the hub's log")
    try:
        with urllib.request.urlopen(f"{url}/ready", timeout=TIMEOUT_S, context=_tls(t)) as r:
            ready = json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as exc:
        ready = json.loads(exc.read() or b"{}")
    except (OSError, ValueError) as exc:
        ready = {"ready": False, "error": str(exc)}
    version = body.get("version", "?")
    if not ready.get("ready"):
        return Result(
            "http",
            Status.FAIL,
            f"hub {version} at {url} is up but not ready: {ready.get('checks', ready)}",
            "see the failing check above (database / broker) and the hub's log",
        )
    return Result("http", Status.OK, f"hub {version} at {url} is up and ready")


# -- all of them -------------------------------------------------------------------------------
CHECKS = ("fleet-secret", "database", "migrations", "signing-key", "clock", "disk", "mqtt", "http")


async def run(t: Target) -> list[Result]:
    """Every check not in ``t.skip``, in an order where later ones use earlier findings."""
    secret, keys = check_secret(t)
    results = [secret]
    db_now = None
    if "database" not in t.skip:
        db_results, db_now = await check_database(t)
        results += db_results
    if "signing-key" not in t.skip:
        results.append(await asyncio.to_thread(check_signing_key, t))
    results += [check_clock(db_now), check_disk(t)]
    if "mqtt" not in t.skip:
        results.append(await asyncio.to_thread(check_mqtt, t, keys))
    if "http" not in t.skip:
        results.append(await asyncio.to_thread(check_http, t))
    return [r for r in results if r.name not in t.skip]


def ok(results: list[Result]) -> bool:
    return not any(r.status is Status.FAIL for r in results)


def as_json(results: list[Result]) -> str:
    checks = [asdict(r) | {"status": r.status.value.lower()} for r in results]
    return json.dumps({"ok": ok(results), "checks": checks})
