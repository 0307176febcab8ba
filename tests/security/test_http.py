"""The HTTP surface: operator token everywhere it matters, no secrets out, bounded bodies,
closed CORS, artifact names that cannot leave the store.

Routes are enumerated from the real app (``build_app`` with every area's router), so a new
mutating endpoint without the token fails here the day it lands.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg
import httpx
import pytest
from fastapi import FastAPI, Request
from starlette.routing import Mount

from picofleet.bridge.service import Ingest
from picofleet.core.credentials import HUB_USER, OPERATOR_USER, FleetKeys
from picofleet.core.settings import Settings
from picofleet.hub import build_app
from picofleet.security.limits import BodySizeLimit, body_limit
from picofleet.security.redact import redact_payload
from picofleet.web.app import HubContext
from tests.conftest import RunningHub, need

ROOT = Path(__file__).resolve().parents[2]
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
OPEN_MUTATING = {("POST", "/ingest")}  # devices and legacy senders post without a token
KEY = "AI-HTTP001"


@pytest.fixture
async def app(settings: Settings, pool: asyncpg.Pool, keys: FleetKeys) -> FastAPI:
    ingest = Ingest(settings=settings, pool=pool, keys=keys)
    await ingest.refresh_record_types(force=True)
    return build_app(HubContext(settings=settings, pool=pool, ingest=ingest, keys=keys))


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as c:
        yield c


def _flatten(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for route in routes:
        inner = getattr(route, "original_router", None)  # FastAPI >= 0.16x: lazy includes
        if inner is not None:
            yield from _flatten(inner.routes, prefix + route.include_context.prefix)
        elif isinstance(route, Mount):
            raise AssertionError(f"mounted sub-app at {route.path}: its routes are not checked")
        elif getattr(route, "methods", None):
            yield prefix + route.path, route


def routes(app: FastAPI) -> Iterator[tuple[str, str, Any]]:
    """Every (method, path, route) the app serves, through included routers."""
    for path, route in _flatten(app.routes):
        for method in sorted(route.methods):
            yield method, path, route


def concrete(path: str) -> str:
    """A request path for a route template; ints where the route wants ints."""
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: "1" if "id" in m[1] else "x1", path)


def mutating(app: FastAPI) -> list[tuple[str, str]]:
    return [(m, p) for m, p, _ in routes(app) if m in MUTATING and (m, p) not in OPEN_MUTATING]


def secrets_of(keys: FleetKeys, db_url: str) -> dict[str, str]:
    ts, nonce = int(time.time()), "0123456789abcdef"
    out = {
        "fleet secret": keys.secret.decode(),
        "operator token": keys.operator_token,
        "hub password": keys.role_password(HUB_USER),
        "operator password": keys.role_password(OPERATOR_USER),
        "device password": keys.device_password(KEY),
        "provision key": keys.provision_key(KEY),
        "legacy token": keys.legacy_token(KEY),
        "startup token": keys.device_startup_token(KEY, ts, nonce),
    }
    db_password = unquote(urlsplit(db_url).password or "")
    if db_password:
        out["database password"] = db_password
    return out


def assert_no_secrets(text: str, secrets: dict[str, str], where: str) -> None:
    leaked = [name for name, value in secrets.items() if value and value in text]
    assert not leaked, f"{where} reveals {leaked}"


# -- the operator token --------------------------------------------------------------------
async def test_every_mutating_endpoint_requires_the_operator_token(
    app: FastAPI, client: httpx.AsyncClient, keys: FleetKeys
) -> None:
    found = mutating(app)
    assert found, "no mutating routes found: is the enumeration broken?"
    for method, path in found:
        url = concrete(path)
        r = await client.request(method, url)
        assert r.status_code == 401, f"{method} {path} without a token: {r.status_code}"
        assert r.headers.get("www-authenticate", "").lower().startswith("bearer")
        for header in (
            "Bearer wrong-token",
            f"Bearer {keys.operator_token[:-1]}",
            f"Bearer {keys.role_password(OPERATOR_USER)}",
        ):
            r = await client.request(method, url, headers={"Authorization": header})
            assert r.status_code == 403, f"{method} {path} with a wrong token: {r.status_code}"
        r = await client.request(
            method, url, headers={"Authorization": f"Basic {keys.operator_token}"}
        )
        assert r.status_code == 401, f"{method} {path} with another scheme: {r.status_code}"


async def test_the_right_token_passes_the_check(
    app: FastAPI, client: httpx.AsyncClient, keys: FleetKeys
) -> None:
    auth = {"Authorization": f"Bearer {keys.operator_token}"}
    for method, path in mutating(app):
        # No body and dummy ids: the handler refuses for its own reasons, never for auth.
        r = await client.request(method, concrete(path), headers=auth)
        assert r.status_code not in (401, 403), f"{method} {path}: {r.status_code} {r.text}"


def _source(rel: str) -> ast.Module:
    return ast.parse((ROOT / rel).read_text())


def test_token_and_password_checks_are_constant_time() -> None:
    """Code inspection: every credential check ends in hmac.compare_digest."""
    creds = _source("picofleet/core/credentials.py")
    equal = next(f for f in ast.walk(creds) if isinstance(f, ast.FunctionDef) and f.name == "equal")
    assert "hmac.compare_digest" in ast.unparse(equal)
    for name in ("check_password", "check_legacy_token", "check_startup_token"):
        fn = next(f for f in ast.walk(creds) if isinstance(f, ast.FunctionDef) and f.name == name)
        assert "equal(" in ast.unparse(fn), name
    auth = ast.unparse(_source("picofleet/web/auth.py"))
    assert re.search(r"\bequal\(creds\.credentials,", auth)
    decode = ast.unparse(_source("picofleet/bridge/decode.py"))
    assert "check_legacy_token(" in decode and "check_startup_token(" in decode


SECRETISH = re.compile(r"token|passw|secret|hmac|\bmac\b|api_key|credential", re.IGNORECASE)


def _plain_comparisons(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        if not any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
            continue
        sides = [node.left, *node.comparators]
        if any(isinstance(s, (ast.Constant, ast.Tuple, ast.List, ast.Set)) for s in sides):
            continue  # against a literal (None, "bearer", 0): not a secret comparison
        texts = [ast.unparse(s) for s in sides]
        if any(SECRETISH.search(t) and not t.startswith("len(") for t in texts):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_plain_equality_on_secrets_anywhere() -> None:
    offenders = []
    for pkg in ("picofleet", "bridge", "broker", "picofleet.web"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            offenders += _plain_comparisons(path)
    assert offenders == []


# -- nothing secret goes out ---------------------------------------------------------------
# picofleet/ota/routes.py serves GET and HEAD from one api_route: FastAPI warns about the
# duplicate operation id whenever the schema is built (reported; not a security matter).


async def test_error_bodies_and_public_pages_reveal_no_secrets(
    app: FastAPI, client: httpx.AsyncClient, keys: FleetKeys, db_url: str
) -> None:
    secrets = secrets_of(keys, db_url)
    wrong = {"Authorization": "Bearer nope"}
    probes: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/no/such/page", {}),
        ("DELETE", "/health", {}),
        ("POST", "/ingest", {"content": b"{not json"}),
        ("POST", "/ingest", {"content": b"\xff" * 100}),
        (
            "POST",
            "/ingest",
            {
                "content": json.dumps(
                    {"event_type": "device_startup", "serial": KEY, "provision_token": "00"}
                ).encode()
            },
        ),
        ("GET", "/ready", {}),
        ("GET", "/metrics", {}),
        ("GET", "/openapi.json", {}),
    ]
    probes += [(m, concrete(p), {"headers": wrong}) for m, p in mutating(app)]
    probes += [(m, concrete(p), {"headers": wrong, "content": b"{"}) for m, p in mutating(app)]
    for method, url, kw in probes:
        r = await client.request(method, url, **kw)
        assert r.status_code < 500, f"{method} {url}: {r.status_code} {r.text[:200]}"
        assert_no_secrets(r.text + str(r.headers), secrets, f"{method} {url}")


async def test_read_api_does_not_hand_out_stored_tokens(
    app: FastAPI, client: httpx.AsyncClient, keys: FleetKeys, db_url: str
) -> None:
    """A refused startup is stored byte for byte; every public view of it masks the token."""
    stored = {
        "legacy": {
            "event_type": "device_startup",
            "serial": KEY,
            "provision_token": keys.legacy_token(KEY),
        },
        "stale": {
            "event_type": "device_startup",
            "serial": KEY,
            "timestamp": int(time.time()) + 900,  # ahead: replayable in 10 minutes if shown
            "nonce": "0123456789abcdef",
            "provision_token": keys.device_startup_token(
                KEY, int(time.time()) + 900, "0123456789abcdef"
            ),
        },
    }
    hub = app.state.hub
    hub.settings = hub.settings.model_copy(update={"legacy_token_enabled": False})
    hub.ingest.decoder.limits = type(hub.ingest.decoder.limits)(legacy_token_enabled=False)
    r = await client.post("/ingest", content=json.dumps(list(stored.values())).encode())
    assert [x["status"] for x in r.json()] == ["unauthorized", "unauthorized"]
    tokens = {k: v["provision_token"] for k, v in stored.items()}
    for method, path, _ in routes(app):
        if method != "GET" or "{" in path or path.startswith("/api/events"):
            continue
        r = await client.get(path)
        leaked = [k for k, tok in tokens.items() if tok in r.text]
        assert not leaked, f"GET {path} shows the stored {leaked} token"


def test_redaction_masks_credentials_in_payload_text() -> None:
    text = '{"serial":"AI-1","provision_token":"abc\\"def","Password": "x", "value": 3, "token":"tr'
    out = redact_payload(text)
    assert "abc" not in out and '"x"' not in out and "tr" not in out.split("token")[-1]
    assert '"serial":"AI-1"' in out and '"value": 3' in out


# -- bounded request bodies ------------------------------------------------------------------
def _echo_app() -> FastAPI:
    app = FastAPI()

    @app.post("/echo")
    async def echo(body: dict[str, Any]) -> dict[str, int]:
        return {"keys": len(body)}

    @app.post("/stream")
    async def stream(request: Request) -> dict[str, int]:
        n = 0
        async for chunk in request.stream():
            n += len(chunk)
        return {"bytes": n}

    return app


async def test_body_size_limit_middleware() -> None:
    app = _echo_app()
    app.add_middleware(BodySizeLimit, max_bytes=1000)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        ok = await c.post("/echo", json={"a": "x" * 900})
        assert ok.status_code == 200
        big = await c.post("/echo", json={"a": "x" * 2000})
        assert big.status_code == 413 and "limit" in big.json()["detail"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
            for _ in range(10):
                yield b"y" * 300

        streamed = await c.post("/stream", content=chunks())
        assert streamed.status_code == 413
        small = await c.post("/stream", content=b"z" * 999)
        assert small.json() == {"bytes": 999}


def test_body_limit_is_a_setting_with_a_sane_default(settings: Settings) -> None:
    assert body_limit(settings) == 1024 * 1024
    assert body_limit(settings.model_copy(update={"max_payload_bytes": 4 << 20})) == 4 << 20


async def _raw_request(port: int, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """Bytes on a socket: no client library to normalise the path or the headers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode("latin-1") + b"\r\n" + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data


async def test_hub_refuses_oversized_bodies(hub: RunningHub) -> None:
    port = hub.settings.http_port
    limit = body_limit(hub.settings)
    head = (
        "POST /ingest HTTP/1.1\r\nHost: hub\r\nContent-Type: application/json\r\n"
        f"Content-Length: {limit + 1}\r\n"
    )
    status, _ = await _raw_request(port, head, b"[")  # the lie is caught before the body
    assert status == 413
    async with httpx.AsyncClient(base_url=hub.http) as c:
        r = await c.post("/ingest", content=b"[" + b"1," * limit + b"1]")
    assert r.status_code == 413


# -- CORS ------------------------------------------------------------------------------------
async def test_cors_is_closed_by_default(app: FastAPI, client: httpx.AsyncClient) -> None:
    evil = {"Origin": "http://evil.example"}
    pre = await client.options("/ingest", headers={**evil, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in pre.headers
    for path in ("/health", "/metrics", "/api/devices"):
        r = await client.get(path, headers=evil)
        assert "access-control-allow-origin" not in r.headers, path
        assert "access-control-allow-credentials" not in r.headers, path
    assert not [m for m in app.user_middleware if "CORS" in getattr(m.cls, "__name__", "")]


# -- OTA artifacts ----------------------------------------------------------------------------
TRAVERSALS = [
    "../fleet.secret",
    "..%2Ffleet.secret",
    "..%2f..%2ffleet.secret",
    "%2e%2e/fleet.secret",
    "....//fleet.secret",
    "..\\fleet.secret",
    "/etc/passwd",
    "%2Fetc%2Fpasswd",
    "fleet.secret",
    "fleet.secret%00" + "a" * 50,
    "A" * 64,
    "a" * 63,
    "a" * 65,
    "a" * 64 + "/../../fleet.secret",
    "a" * 64 + "%00",
    "%61" * 64,
]


async def test_artifact_paths_cannot_escape_the_store(hub: RunningHub) -> None:
    need(importlib.util.find_spec("picofleet.ota.routes") is not None, "picofleet.ota routes")
    from picofleet.core.artifacts import ArtifactStore

    store = ArtifactStore.for_settings(hub.settings)
    secret_file = hub.settings.data_path / "fleet.secret"
    secret_file.parent.mkdir(parents=True, exist_ok=True)
    secret_file.write_text("not-the-real-secret-but-must-not-leak")
    sha = store.put(b"print('hello')\n")
    async with httpx.AsyncClient(base_url=hub.http) as c:
        good = await c.get(f"/ota/artifacts/{sha}")
        assert good.status_code == 200 and good.content == b"print('hello')\n"
    for name in TRAVERSALS:
        for prefix in ("/ota/artifacts/", "/ota/artifacts/x/"):
            status, data = await _raw_request(
                hub.settings.http_port, f"GET {prefix}{name} HTTP/1.1\r\nHost: hub\r\n"
            )
            assert status in (400, 404, 405, 422), f"{prefix}{name}: {status}"
            assert b"must-not-leak" not in data and b"root:" not in data
    for name in TRAVERSALS:
        if unquote(name) != "a" * 64:  # %61 x 64 decodes to a well-formed (absent) name
            assert store.path(unquote(name)) is None
