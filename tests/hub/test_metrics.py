"""Issue 16: one ``/metrics``, through prometheus_client, named per Prometheus conventions.

Parsed with prometheus_client's own parser after known messages: every family has HELP and
TYPE, counters end in ``_total``, durations are in seconds, and the values are the messages
sent (by source, outcome and code), the batches' histograms, the buffer, devices online,
rollouts by state and the build.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import picofleet
from picofleet.core.buildinfo import build_info
from picofleet.core.settings import Settings
from picofleet.core.topics import Kind
from tests.conftest import RunningHub, running_hub
from tests.helpers import Client, free_port, metric, wait_for

KEY = "AI-PROM01"
NAME_RE = re.compile(r"^picofleet_[a-z0-9_]+$")


async def test_one_metrics_endpoint_with_known_values(hub: RunningHub, pool: asyncpg.Pool) -> None:
    now = time.time() - 60
    dev = Client(hub.mqtt_port, KEY, hub.keys.device_password(KEY), client_id=KEY)
    assert await asyncio.to_thread(dev.connect)  # the embedded broker runs in this loop
    try:
        topic = hub.topics.device(KEY, Kind.TELEMETRY)
        for seq in (1, 2):
            body = {
                "v": 1,
                "seq": seq,
                "ts": now + seq,
                "readings": [{"type": "pump_on", "value": 1}],
            }
            await asyncio.to_thread(dev.publish, topic, json.dumps(body).encode())
        await asyncio.to_thread(dev.publish, topic, b"{not json")
    finally:
        dev.close()
    batch = [
        {"device_id": 5, "event_type": "battery_charge", "value": 55, "timestamp": now},
        {"device_id": 5, "event_type": "battery_charge", "value": 999, "timestamp": now},
        {"device_id": 5, "event_type": "nonsense", "value": 1, "timestamp": now},
    ]
    async with httpx.AsyncClient(base_url=hub.http) as http:
        assert (await http.post("/ingest", json=batch)).status_code == 200
        # Once more: the first event is a duplicate now.
        assert (await http.post("/ingest", json=batch[:1])).json()[0]["status"] == "duplicate"

        async def all_committed() -> str | None:
            r = await http.get("/metrics")
            text = r.text
            done = metric(text, "picofleet_messages_committed_total", source="mqtt") == 3
            return text if done else None

        text = await wait_for(all_committed)
        assert r_type(await http.get("/metrics")).startswith("text/plain; version=0.0.4")
        om = await http.get("/metrics", headers={"Accept": "application/openmetrics-text"})
        assert r_type(om).startswith("application/openmetrics-text")
        assert om.text.endswith("# EOF\n")
        assert (await http.get("/metrics/ops")).status_code == 404  # merged into /metrics

    assert await pool.fetchval("SELECT count(*) FROM raw_record") == 7

    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, f in families.items():
        assert NAME_RE.match(name), name
        assert f.documentation, f"{name} has no HELP"
        assert f"# HELP {name}" in text and f"# TYPE {name}" in text
        assert f.type in ("counter", "gauge", "histogram"), (name, f.type)
        if f.type == "counter":  # the parser drops _total from the family name; the text has it
            assert any(s.name == f"{name}_total" for s in f.samples), name
        if "seconds" in name or "duration" in name:
            assert name.endswith("_seconds"), name
    assert {
        "picofleet_messages_received",
        "picofleet_messages_committed",
        "picofleet_messages_rejected",
        "picofleet_batch_size_messages",
        "picofleet_commit_duration_seconds",
        "picofleet_bridge_buffered_messages",
        "picofleet_devices",
        "picofleet_rollouts",
        "picofleet_build_info",
        "picofleet_task_up",
    } <= set(families)
    assert families["picofleet_batch_size_messages"].type == "histogram"
    assert families["picofleet_commit_duration_seconds"].type == "histogram"
    assert "picofleet_ingest_errors_24h" not in families  # a windowed gauge; use the counter

    def m(sample: str, **labels: str) -> float:
        return metric(text, sample, **labels)

    assert m("picofleet_messages_received_total", source="mqtt") == 3
    assert m("picofleet_messages_received_total", source="http") == 4
    assert m("picofleet_messages_received_total", source="usb") == 0
    assert m("picofleet_messages_committed_total", source="mqtt", outcome="ok") == 2
    assert m("picofleet_messages_committed_total", source="mqtt", outcome="invalid") == 1
    assert m("picofleet_messages_committed_total", source="http", outcome="ok") == 1
    assert m("picofleet_messages_committed_total", source="http", outcome="invalid") == 2
    assert m("picofleet_messages_committed_total", source="http", outcome="duplicate") == 1
    assert m("picofleet_messages_rejected_total", source="mqtt", code="invalid_json") == 1
    assert m("picofleet_messages_rejected_total", source="http", code="out_of_range") == 1
    assert m("picofleet_messages_rejected_total", source="http", code="unknown_event_type") == 1
    assert m("picofleet_facts_committed_total") == 3
    assert m("picofleet_duplicates_total") == 1
    # Every committed message sits in exactly one batch; the histogram counts the batches.
    batches = m("picofleet_batches_total")
    assert m("picofleet_batch_size_messages_count") == batches
    assert m("picofleet_batch_size_messages_sum") == 7
    assert m("picofleet_batch_size_messages_bucket", le="+Inf") == batches
    assert m("picofleet_commit_duration_seconds_count") == batches
    assert m("picofleet_bridge_buffered_messages") == 0
    assert m("picofleet_broker_connected") == 1
    assert m("picofleet_db_up") == 1
    assert m("picofleet_devices", state="online") == await pool.fetchval(
        "SELECT count(*) FROM device"
    )
    assert m("picofleet_task_up", task="bridge") == 1
    info = build_info()
    assert m("picofleet_build_info", version=picofleet.__version__, commit=info.commit) == 1


def r_type(r: httpx.Response) -> str:
    return r.headers["content-type"]


async def test_bridge_role_serves_metrics_on_its_own_port(settings: Settings) -> None:
    """`serve bridge` has no HTTP API, yet its MQTT counters are what Prometheus needs most."""
    s = settings.model_copy(update={"metrics_port": free_port()})
    async with running_hub(s, roles=frozenset({"bridge"})) as hub:
        dev = Client(hub.mqtt_port, KEY, hub.keys.device_password(KEY), client_id=KEY)
        assert await asyncio.to_thread(dev.connect)
        try:
            body = {"v": 1, "seq": 1, "readings": [{"type": "pump_on", "value": 0}]}
            topic = hub.topics.device(KEY, Kind.TELEMETRY)
            await asyncio.to_thread(dev.publish, topic, json.dumps(body).encode())
        finally:
            dev.close()
        base = f"http://127.0.0.1:{s.metrics_port}"
        async with httpx.AsyncClient(base_url=base) as http:

            async def committed() -> bool:
                text = (await http.get("/metrics")).text
                return metric(text, "picofleet_messages_committed_total", source="mqtt") == 1

            await wait_for(committed)
            assert (await http.get("/health")).json()["status"] == "ok"
            assert (await http.post("/ingest", json=[])).status_code in (404, 405)
            assert (await http.get("/api/devices")).status_code == 404
        with pytest.raises(httpx.ConnectError):  # and no HTTP API on http_port
            await httpx.AsyncClient().get(f"http://127.0.0.1:{s.http_port}/health")
