"""Request size limits for the HTTP app, enforced before any route reads a byte.

Routes keep their own, finer limits (``/ingest`` stores an oversized message as
``payload_too_large`` like MQTT does, OTA uploads check ``max_artifact_bytes``); this is the
outer bound that keeps a hostile or broken client from making the hub buffer an unbounded
body. A declared ``Content-Length`` over the limit is refused at once; a chunked body is
counted as it streams and refused when it crosses the limit.

``RefuseNul`` turns away a NUL in the path or query, and ``Instant``, ``Day`` and ``RowId``
bound the query parameters routes hand to PostgreSQL, so such input is a 4xx at the edge.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from picofleet.core.settings import Settings

# The same bound as the generated Mosquitto config's max_packet_size: nothing the hub accepts
# over MQTT is bigger, so nothing over HTTP needs to be either.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024


def body_limit(settings: Settings) -> int:
    """The HTTP body limit for these settings: never below one MQTT message's limit."""
    return max(DEFAULT_MAX_BODY_BYTES, settings.max_payload_bytes)


def _json_error(status: int, detail: str, *, close: bool = False) -> tuple[Message, Message]:
    """The ASGI messages of a JSON error answer, sent before the app sees the request."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:  # the client may still be sending a body we will not read
        headers.append((b"connection", b"close"))
    start: Message = {"type": "http.response.start", "status": status, "headers": headers}
    return start, {"type": "http.response.body", "body": body}


def _too_large(limit: int) -> tuple[Message, Message]:
    return _json_error(413, f"request body over the limit of {limit} bytes", close=True)


class BodySizeLimit:
    """ASGI middleware: ``app.add_middleware(BodySizeLimit, max_bytes=...)``.

    Args:
        app: the wrapped ASGI application.
        max_bytes: the largest request body accepted, in bytes.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            for message in _too_large(self.max_bytes):
                await send(message)
            return
        seen = 0
        over = False
        started = False

        async def limited_receive() -> Message:
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # The app sees a client that went away; its answer is replaced below.
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over and not started:
                return  # swallow whatever the app makes of the "disconnect"
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not over:
                raise
        if over and not started:
            started = True
            for message in _too_large(self.max_bytes):
                await send(message)


def _content_length(scope: Scope) -> int | None:
    """The declared body length; a malformed header counts as too large."""
    headers: Any = scope.get("headers") or ()
    for name, value in headers:
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else 1 << 62
    return None


# -- bounded query parameters ----------------------------------------------------------------
# Values a route passes to PostgreSQL or does date arithmetic on: out-of-range input is a 422
# at the edge instead of an overflow (500) in asyncpg or in a default window (until - 24 h).
MAX_ROW_ID = 2**63 - 1  # bigint
_EARLIEST = datetime(2, 1, 1, tzinfo=UTC)
_LATEST = datetime(9998, 12, 31, tzinfo=UTC)


def _instant_in_range(value: datetime) -> datetime:
    try:
        utc = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except OverflowError:
        raise ValueError("timestamp out of range") from None
    if not _EARLIEST <= utc <= _LATEST:
        raise ValueError("timestamp must lie between the years 2 and 9998")
    return value


def _day_in_range(value: date) -> date:
    if not _EARLIEST.date() <= value <= _LATEST.date():
        raise ValueError("date must lie between the years 2 and 9998")
    return value


Instant = Annotated[datetime, AfterValidator(_instant_in_range)]
Day = Annotated[date, AfterValidator(_day_in_range)]
RowId = Annotated[int, Field(ge=1, le=MAX_ROW_ID)]


class RefuseNul:
    """ASGI middleware: 400 for a NUL character anywhere in the path or the query string.

    PostgreSQL text cannot hold U+0000, so such a value would fail deep in a query (a 500)
    instead of at the edge; no legitimate key, version or filter contains one.

    Args:
        app: the wrapped ASGI application.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _has_nul(scope):
            for message in _json_error(400, "NUL character in the request target"):
                await send(message)
            return
        await self.app(scope, receive, send)


def _has_nul(scope: Scope) -> bool:
    query: bytes = scope.get("query_string") or b""
    path: str = scope.get("path") or ""
    return "\x00" in path or b"\x00" in query or b"%00" in query
