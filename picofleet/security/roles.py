"""The hub's least-privilege database role.

Migrations run as the owner; ``sql/0040_runtime_role.sql`` creates ``picofleet_runtime``
(NOLOGIN, row rights on the hub's tables, owner of nothing). After migrating, the hub gives it
a login here and opens its pool as that role, so a bug or an injection in the running hub
can read and write rows but cannot drop or alter a table.

The password is derived from the fleet secret (``FleetKeys.runtime_db_password``), so every
hub process of a fleet sets the same one and none locks another out; it is sent to the server
as a SCRAM verifier, so the clear text never reaches the server's statement log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import asyncpg

from picofleet.core import db, logs
from picofleet.core.credentials import FleetKeys

RUNTIME_ROLE = "picofleet_runtime"
_SCRAM_ITERATIONS = 4096


def scram_verifier(password: str, *, salt: bytes | None = None) -> str:
    """PostgreSQL's stored form of a SCRAM-SHA-256 password (RFC 5802, RFC 7677)."""
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _SCRAM_ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    return f"SCRAM-SHA-256${_SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def url_for_role(url: str, role: str, password: str) -> str:
    """``url`` with its user and password replaced (also when given as query parameters)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k not in ("user", "password")])
    netloc = f"{quote(role, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


async def ensure_runtime_login(owner_url: str, keys: FleetKeys) -> str | None:
    """Refresh the runtime role's grants and login; return the URL to connect as it.

    None when the role cannot be used here (the migrating user may not create or alter
    roles, or the server refuses the login): the caller then keeps the owner's URL.
    """
    log = logs.get("picofleet.security")
    password = keys.runtime_db_password(RUNTIME_ROLE)
    conn = await asyncpg.connect(owner_url)
    try:
        if await conn.fetchval("SELECT to_regprocedure('picofleet_grant_runtime()')") is None:
            log.warning("db.runtime_role_missing", reason="migration 0040 not applied")
            return None
        # Hub processes starting together (compose: bridge and http) would otherwise race on
        # the same catalog rows ("tuple concurrently updated").
        async with conn.transaction():
            await db.xact_lock(conn, db.Lock.RUNTIME_ROLE)
            if not await conn.fetchval("SELECT picofleet_grant_runtime()"):
                log.warning("db.runtime_role_missing", reason="role could not be created")
                return None
            verifier = scram_verifier(password)
            # ALTER ROLE takes no bind parameters; the verifier is base64 and '$' only.
            await conn.execute(f"ALTER ROLE {RUNTIME_ROLE} LOGIN PASSWORD '{verifier}'")
    except asyncpg.InsufficientPrivilegeError as exc:
        log.warning("db.runtime_role_unavailable", reason=str(exc)[:200])
        return None
    finally:
        await conn.close()
    url = url_for_role(owner_url, RUNTIME_ROLE, password)
    try:
        probe = await asyncpg.connect(url)
    except (OSError, asyncpg.PostgresError) as exc:
        log.warning("db.runtime_login_refused", reason=type(exc).__name__)
        return None
    try:
        who = await probe.fetchval("SELECT current_user")
    finally:
        await probe.close()
    log.info("db.runtime_role", role=who)
    return url
