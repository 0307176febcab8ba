"""schemathesis against the hub's own OpenAPI spec: no input makes a route fail.

Every documented operation gets generated requests (valid by the spec, then invalid ones),
sent with the operator token so they reach the handlers, against a running hub with a real
database. A 5xx, a response body that contradicts the documented schema, or a wrong content
type is a failure. The number of examples is bounded so the whole run stays well under a
minute; hypothesis keeps no example database, so a run is repeatable from its seed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from picofleet.core.signing import init_keys
from tests.conftest import RunningHub

EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 10}
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
# Server-sent events never end, so a generated request would wait for ever; the stream's
# inputs are probed by test_event_stream_inputs below.
STREAMS = {"/api/events"}


def describe(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            lines += [ln.strip() for ln in str(sub).splitlines() if ln.strip()]
    return " | ".join(ln for ln in lines if not ln.startswith("Reproduce"))[:600]


def fuzz(base_url: str, token: str) -> tuple[int, list[str]]:
    """Run every operation's examples; returns (requests sent, failures)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    sent = 0
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in STREAMS:
            continue
        for mode, examples in EXAMPLES.items():

            @hypothesis.settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                nonlocal sent
                sent += 1
                response = case.call(base_url=base_url, session=session, timeout=30)
                case.validate_response(response, checks=CHECKS)

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                pass  # no parameters, or none that can be made invalid: nothing to send
            # schemathesis reports through a BaseExceptionGroup; collect every operation's
            # failure instead of stopping at the first.
            except (Exception, FailureGroup) as exc:
                failures.append(f"{operation.label} [{mode.value}]: {describe(exc)}")
    return sent, failures


async def test_openapi_operations_survive_generated_input(hub: RunningHub) -> None:
    init_keys(hub.settings.data_path)  # so release, rollout and pin requests reach the database
    sent, failures = await asyncio.to_thread(fuzz, hub.http, hub.keys.operator_token)
    assert sent > 100, "schemathesis found almost nothing to send: is the spec served?"
    print(f"schemathesis: {sent} requests")
    assert failures == [], "\n".join(failures)


async def test_event_stream_inputs(hub: RunningHub, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SSE stream's resume point, from the query or Last-Event-ID: hostile values are
    refused up front or ignored; none breaks the stream after it has started."""
    from picofleet.ops import routes as ops_routes

    monkeypatch.setattr(ops_routes, "HEARTBEAT_S", 0.05)  # a ping proves the stream lives on
    cases: list[tuple[dict[str, str], dict[str, bytes], int]] = [
        ({"after": str(2**63)}, {}, 422),
        ({"after": "-5"}, {}, 422),
        ({"after": "x"}, {}, 422),
        ({"after": "3"}, {}, 200),
        ({}, {"Last-Event-ID": "²".encode("latin-1")}, 200),
        ({}, {"Last-Event-ID": b"9" * 40}, 200),
        ({}, {"Last-Event-ID": b"-1"}, 200),
    ]
    async with httpx.AsyncClient(base_url=hub.http, timeout=10) as c:
        for params, headers, status in cases:
            async with c.stream("GET", "/api/events", params=params, headers=headers) as r:
                assert r.status_code == status, (params, headers, r.status_code)
                if status != 200:
                    continue
                text = ""
                async for chunk in r.aiter_text():
                    text += chunk
                    if ": ping" in text:
                        break
                assert text.startswith("retry:") and ": ping" in text, (params, headers, text)


async def test_what_the_fuzzing_found_is_refused_at_the_edge(hub: RunningHub) -> None:
    """The inputs that once reached PostgreSQL and failed there (500) are 4xx now."""
    init_keys(hub.settings.data_path)
    auth = {"Authorization": f"Bearer {hub.keys.operator_token}"}
    cases = [
        ("GET", "/api/ota/releases?device_type=a%00b", 400),  # text cannot hold U+0000
        ("GET", "/api/errors?device=%00", 400),
        ("GET", "/api/devices/AI-%00", 400),
        ("GET", "/api/ota/rollouts?limit=-1", 422),  # negative LIMIT
        ("GET", f"/api/ota/rollouts/{2**63}", 422),  # past bigint
        ("POST", f"/api/ota/rollouts/{2**64}/pause", 422),
        ("GET", f"/api/telemetry?before_id={-(2**64)}", 422),
        ("GET", "/api/errors?until=0001-01-01T00:00:01%2B01:00", 422),  # year 0 in UTC
        ("GET", "/api/stats/hourly?until=0001-01-01T10:00:00Z", 422),  # until - 24 h
        ("GET", "/api/stats/daily?until=0001-01-02", 422),  # until - 30 days
        ("GET", "/api/events?after=-1", 422),
    ]
    async with httpx.AsyncClient(base_url=hub.http, headers=auth, timeout=10) as c:
        for method, url, status in cases:
            r = await c.request(method, url)
            assert r.status_code == status, (method, url, r.status_code, r.text[:200])
        # An OTA domain refusal has the same 422 shape as every other one in the spec.
        r = await c.put("/api/ota/pins/AI-PIN001", json={"version": "not-semver"})
        assert r.status_code == 422
        assert r.json()["detail"][0]["msg"].startswith("version 'not-semver'")
