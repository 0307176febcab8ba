"""Issue 16: the provisioned Grafana dashboard works against what the hub really has.

Every SQL query in deploy/grafana/dashboards/*.json (panels and template variables) runs, with
Grafana's macros and variables substituted as Grafana would, against the migrated schema as
picofleet_readonly, which can read what the dashboards chart and nothing else. Every metric a
PromQL expression names is one the hub's /metrics exports.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningHub

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy/grafana/dashboards").glob("*.json"))
DATASOURCES = ROOT / "deploy/grafana/provisioning/datasources/picofleet.yaml"
PG_TYPES = {"grafana-postgresql-datasource", "postgres"}
READONLY = "picofleet_readonly"

RANGE = timedelta(days=7)  # the dashboard's default time range, ending now
INTERVALS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# What the test's dashboard has chosen: one series, two devices of the multi-value variable.
VARIABLES = {"series": "battery_charge", "device": ["5", "6"]}


def dashboards() -> list[dict[str, Any]]:
    assert DASHBOARDS, "no dashboard in deploy/grafana/dashboards"
    return [json.loads(p.read_text()) for p in DASHBOARDS]


def targets(dash: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(panel title, panel datasource, target) for every target of every panel."""
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            yield panel["title"], t.get("datasource") or panel.get("datasource") or {}, t


def sql_queries() -> list[tuple[str, str]]:
    found = []
    for dash in dashboards():
        for title, ds, t in targets(dash):
            if ds.get("type") in PG_TYPES:
                found.append((f"{title} [{t['refId']}]", t["rawSql"]))
        for var in dash.get("templating", {}).get("list", []):
            if var.get("datasource", {}).get("type") in PG_TYPES:
                found.append((f"variable {var['name']}", var["query"]))
    return found


def promql() -> list[str]:
    return [
        t["expr"]
        for dash in dashboards()
        for _, ds, t in targets(dash)
        if ds.get("type") == "prometheus"
    ]


def _ts(d: datetime) -> str:
    return f"'{d.isoformat()}'::timestamptz"


def _seconds(interval: str) -> int:
    m = re.fullmatch(r"'?(\d+)([smhd])'?", interval.strip())
    assert m, f"interval {interval!r}"
    return int(m.group(1)) * INTERVALS[m.group(2)]


def grafana_sql(query: str) -> str:
    """Grafana's PostgreSQL macros and this test's variables, as Grafana expands them (the
    range ends when the query is made, not when this module was collected)."""
    now = datetime.now(UTC)
    start, end = now - RANGE, now + timedelta(minutes=1)
    q = query.replace("$__interval", "1m")
    q = re.sub(
        r"\$__timeGroupAlias\(([^,()]+),([^()]+)\)",
        lambda m: (
            f"floor(extract(epoch from {m.group(1)}) / {_seconds(m.group(2))}) * "
            f'{_seconds(m.group(2))} AS "time"'
        ),
        q,
    )
    q = re.sub(
        r"\$__timeFilter\(([^()]+)\)",
        lambda m: f"{m.group(1)} BETWEEN {_ts(start)} AND {_ts(end)}",
        q,
    )
    q = q.replace("$__timeFrom()", _ts(start)).replace("$__timeTo()", _ts(end))
    for name, value in VARIABLES.items():
        # Multi-value variables become a quoted list; single values are inserted as they are.
        text = ",".join(f"'{v}'" for v in value) if isinstance(value, list) else value
        q = re.sub(rf"\$\{{{name}\}}|\${name}\b", text, q)
    assert "$" not in q, f"unexpanded macro or variable in:\n{q}"
    return q


def test_provisioning_names_the_dashboards_sources() -> None:
    sources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    uids = {s["uid"]: s for s in sources}
    pg = [s for s in sources if s["type"] in PG_TYPES]
    assert len(pg) == 1 and pg[0]["user"] == READONLY
    for dash in dashboards():
        for title, ds, _ in targets(dash):
            assert ds.get("uid") in uids, f"{title}: unknown data source {ds}"
            assert uids[ds["uid"]]["type"] == ds["type"], title
    assert len(sql_queries()) >= 10 and len(promql()) >= 8


async def seed(hub: RunningHub, pool: asyncpg.Pool) -> None:
    now = time.time()
    events = [
        {"device_id": d, "event_type": t, "value": v, "timestamp": now - 600 + i}
        for i, (d, t, v) in enumerate(
            [(5, "battery_charge", 80), (5, "battery_charge", 79), (6, "battery_charge", 50)]
        )
    ]
    events.append({"device_id": 6, "event_type": "battery_charge", "value": "high"})
    async with httpx.AsyncClient(base_url=hub.http) as http:
        got = (await http.post("/ingest", json=events)).json()
    assert [r["status"] for r in got] == ["ok", "ok", "ok", "invalid"]
    # What the analytics job and the alerting would have written by now.
    await pool.execute(
        "INSERT INTO rollup_hourly (device_id, hour, series, n, min_value, max_value, "
        "sum_value, avg_value, first_time, last_time) "
        "SELECT id, date_trunc('hour', now()), 'battery_charge', 2, 79, 80, 159, 79.5, now(), "
        "now() FROM device WHERE device_key = '5'"
    )
    await pool.execute(
        "INSERT INTO alert (kind, subject, device_key, opened_at) "
        "VALUES ('battery_low', '6', '6', now())"
    )
    await pool.execute(
        "INSERT INTO deploy_event (device_key, version, state, source) "
        "VALUES ('5', '1.4.0', 'booted_ok', 'usb')"
    )


async def readonly_conn(db_url: str, pool: asyncpg.Pool) -> asyncpg.Connection:
    """A login as the read-only role, as Grafana's data source has after the operator gave
    the role a password (the migration creates it NOLOGIN)."""
    await pool.execute(f"ALTER ROLE {READONLY} LOGIN PASSWORD 'grafana-test-password'")
    parts = urlsplit(db_url)
    netloc = f"{READONLY}:grafana-test-password@{parts.hostname}:{parts.port}"
    return await asyncpg.connect(urlunsplit(parts._replace(netloc=netloc)))


# Queries that must return rows once the seed is in (the rest may be empty on a new fleet).
EXPECT_ROWS = (
    "Hourly average",
    "Raw readings",
    "Ingest errors",
    "Fleet",
    "Open alerts",
    "Battery summary",
    "Deploy log",
    "variable series",
    "variable device",
)


async def test_every_dashboard_query_runs_as_the_readonly_role(
    hub: RunningHub, pool: asyncpg.Pool, db_url: str
) -> None:
    await seed(hub, pool)
    conn = await readonly_conn(db_url, pool)
    try:
        assert await conn.fetchval("SELECT current_user") == READONLY
        for title, query in sql_queries():
            try:
                rows = await conn.fetch(grafana_sql(query))
            except asyncpg.PostgresError as exc:
                pytest.fail(f"{title}: {type(exc).__name__}: {exc}\n{grafana_sql(query)}")
            if title.startswith(EXPECT_ROWS):
                assert rows, f"{title} returned no rows"
            if "time" in (rows[0].keys() if rows else []):
                assert rows == sorted(rows, key=lambda r: r["time"]), f"{title}: unordered"
        # Read-only, and blind to what dashboards have no business with.
        for forbidden in (
            "SELECT payload FROM raw_record LIMIT 1",
            "SELECT * FROM provision_nonce LIMIT 1",
            "SELECT * FROM ingest_grant LIMIT 1",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch(forbidden)
        with pytest.raises(asyncpg.PostgresError):
            await conn.execute("UPDATE device SET blocked = true")
        with pytest.raises(asyncpg.PostgresError):
            await conn.execute("CREATE TABLE grafana_was_here (x int)")
    finally:
        await conn.close()
    assert await pool.fetchval("SELECT count(*) FROM device WHERE blocked") == 0


async def test_every_promql_metric_is_exported(hub: RunningHub) -> None:
    async with httpx.AsyncClient(base_url=hub.http) as http:
        bad = {"device_id": 5, "event_type": "battery_charge", "value": "high"}
        assert (await http.post("/ingest", json=bad)).json()[0]["status"] == "invalid"
        text = (await http.get("/metrics")).text
    exported = set()
    for family in text_string_to_metric_families(text):
        exported.add(family.name)
        exported |= {s.name for s in family.samples}
    named = {n for expr in promql() for n in re.findall(r"\bpicofleet_[a-z0-9_]+", expr)}
    assert named, "no PromQL in the dashboard"
    assert named <= exported, f"not in /metrics: {sorted(named - exported)}"


def test_compose_profile_wires_grafana_and_prometheus() -> None:
    svcs = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    for name in ("grafana", "prometheus"):
        assert svcs[name]["profiles"] == ["grafana"], f"{name} runs only when asked for"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in svcs["grafana"]["volumes"]}
    assert (ROOT / mounts["/etc/grafana/provisioning"]).resolve() == DATASOURCES.parents[1]
    assert (ROOT / mounts["/var/lib/grafana/dashboards"]).resolve() == DASHBOARDS[0].parent
    provider = yaml.safe_load((DATASOURCES.parents[1] / "dashboards/picofleet.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    http_job, bridge_job = prom["scrape_configs"]
    assert http_job["metrics_path"] == bridge_job["metrics_path"] == "/metrics"
    port = svcs["http"]["ports"][0].split(":")[-1]  # the HTTPS port (issue 17)
    assert http_job["scheme"] == "https" and port == "8443"
    assert http_job["static_configs"][0]["targets"] == [f"http:{port}"]
    ca = http_job["tls_config"]["ca_file"]
    assert any(ca.startswith(v.split(":")[1] + "/") for v in svcs["prometheus"]["volumes"])
    bridge = svcs["bridge"]["command"]
    metrics_port = bridge[bridge.index("--metrics-port") + 1]
    assert bridge_job["static_configs"][0]["targets"] == [f"bridge:{metrics_port}"]


def test_panels_fit_the_grid_without_overlap() -> None:
    for dash in dashboards():
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), "panel ids repeat"
        taken: set[tuple[int, int]] = set()
        for p in dash["panels"]:
            g = p["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
            cells = {(g["x"] + i, g["y"] + j) for i in range(g["w"]) for j in range(g["h"])}
            assert not cells & taken, f"{p['title']} overlaps another panel"
            taken |= cells
