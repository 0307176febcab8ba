"""Server-sent events from a running hub: new errors arrive, a reconnect resumes, and an
open stream ends cleanly when the hub stops."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from tests.conftest import RunningHub


@dataclass
class Sse:
    event: str
    data: Any
    id: str | None


async def next_event(lines: AsyncIterator[str], name: str) -> Sse:
    """The next event called ``name`` (comments, retry hints and other events skipped)."""
    fields: dict[str, str] = {}
    async for line in lines:
        if line:
            key, _, value = line.partition(":")
            fields[key] = value.removeprefix(" ")
            continue
        if fields.get("event") == name:
            return Sse(name, json.loads(fields["data"]), fields.get("id"))
        fields = {}
    raise AssertionError(f"stream ended before a {name!r} event")


async def test_errors_arrive_live_and_a_reconnect_resumes(hub: RunningHub) -> None:
    async with httpx.AsyncClient(base_url=hub.http, timeout=15) as http:
        async with http.stream("GET", "/api/events") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = r.aiter_lines()
            await next_event(lines, "counters")  # subscribed and polling
            await http.post("/ingest", content=b"first: not json")
            first = await asyncio.wait_for(next_event(lines, "ingest_error"), 15)
        assert first.data["code"] == "invalid_json"
        assert first.data["payload"] == "first: not json"
        assert first.id == str(first.data["id"])

        # Missed while disconnected: replayed from Last-Event-ID on reconnect.
        await http.post("/ingest", content=b"second: not json")
        headers = {"Last-Event-ID": first.id}
        async with http.stream("GET", "/api/events", headers=headers) as r:
            second = await asyncio.wait_for(next_event(r.aiter_lines(), "ingest_error"), 15)
        assert second.data["payload"] == "second: not json"
        assert int(second.id or 0) > int(first.id)


async def test_an_open_stream_ends_cleanly_when_the_hub_stops(hub: RunningHub) -> None:
    async with httpx.AsyncClient(base_url=hub.http, timeout=30) as http:
        async with http.stream("GET", "/api/events") as r:
            lines = r.aiter_lines()
            await next_event(lines, "counters")
            await hub.stop()
            rest = [line async for line in lines]  # a cut connection would raise here
        assert all(not line.startswith("event: ingest_error") for line in rest)
    assert hub.task.done() and hub.task.exception() is None
