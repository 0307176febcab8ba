"""Chart data (/api/stats/series), alert acknowledgement and the dashboard's static assets,
over HTTP against the app on a real PostgreSQL with a week of data rolled up by the real job.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from picofleet.core.credentials import FleetKeys
from picofleet.core.topics import Topics
from tests.ops.week import FIRST, FLEET, fill

ROOT = Path(__file__).resolve().parents[2]
ORDER = ["soil_moisture_pct", "pump_on", "battery_charge", "free_mem_bytes"]


def _of(chart: dict[str, Any], type_: str, device: str = FIRST) -> dict[str, Any]:
    (s,) = [s for s in chart["series"] if s["type"] == type_ and s["device"] == device]
    return s


def _values(s: dict[str, Any]) -> list[float]:
    return [v for _, v in s["points"] if v is not None]


async def test_week_from_hourly_rollups_with_gap_markers_and_thresholds(
    api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    week = await fill(pool, Topics())
    r = await api.get("/api/stats/series", params={"range": "7d", "device": FIRST})
    assert r.status_code == 200, r.text
    chart = r.json()
    assert chart["source"] == "hourly" and chart["bucket_s"] == 3600
    # Soil moisture first, free memory last, whatever order the device sent them in.
    assert [s["type"] for s in chart["series"]] == ORDER
    since = datetime.fromisoformat(chart["since"])
    for s in chart["series"]:
        hours = await pool.fetch(
            "SELECT r.hour, r.avg_value, r.max_value FROM rollup_hourly r"
            " WHERE r.device_id = $1 AND r.series = $2"
            " AND r.hour >= date_trunc('hour', $3::timestamptz, 'UTC') ORDER BY r.hour",
            week.ids[FIRST],
            s["type"],
            since,
        )
        # One point per rolled-up hour: the mean, or for on/off the max ("was it on").
        col = "max_value" if s["type"] == "pump_on" else "avg_value"
        assert _values(s) == [h[col] for h in hours]
        # The six empty hours are one gap (a null), not a line across them.
        nulls = [t for t, v in s["points"] if v is None]
        assert len(nulls) == 1
        assert week.hole[0].timestamp() <= nulls[0] < week.hole[1].timestamp()
    assert _of(chart, "pump_on")["step"] is True
    assert _of(chart, "soil_moisture_pct")["step"] is False
    assert _of(chart, "soil_moisture_pct")["threshold"] == 15.0  # the soil_dry rule's
    assert _of(chart, "battery_charge")["threshold"] == 20.0  # the battery_low rule's
    assert _of(chart, "free_mem_bytes")["threshold"] is None
    kinds = [m["kind"] for m in chart["markers"]]
    assert sorted(kinds) == ["alert", "install", "reboot", "reboot"]
    assert [m["t"] for m in chart["markers"]] == sorted(m["t"] for m in chart["markers"])

    # Another device has no markers of its own (the alert is about the first device).
    other = await api.get("/api/stats/series", params={"range": "7d", "device": "AI-WEEK03"})
    assert [m["kind"] for m in other.json()["markers"]] == []


async def test_ranges_read_raw_facts_then_rollups(
    api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    week = await fill(pool, Topics())
    hour = (await api.get("/api/stats/series", params={"range": "1h", "device": FIRST})).json()
    assert hour["source"] == "raw"
    n = await pool.fetchval(
        "SELECT count(*) FROM processed_record p JOIN record_type t ON t.id = p.record_type_id"
        " WHERE p.device_id = $1 AND t.name = 'soil_moisture_pct'"
        " AND p.record_time >= $2 AND p.record_time < $3",
        week.ids[FIRST],
        datetime.fromisoformat(hour["since"]),
        datetime.fromisoformat(hour["until"]),
    )
    assert len(_values(_of(hour, "soil_moisture_pct"))) == n >= 5  # one every 10 minutes

    # Amounts add up over a bucket: an hour's pump run time is the sum of its readings.
    week_ = await api.get("/api/stats/series", params={"range": "7d", "device": "AI-WEEK02"})
    run = _of(week_.json(), "pump_runtime_s", "AI-WEEK02")
    sums = await pool.fetch(
        "SELECT sum_value FROM rollup_hourly WHERE device_id = $1 AND series = 'pump_runtime_s'"
        " AND hour >= date_trunc('hour', $2::timestamptz, 'UTC') ORDER BY hour",
        week.ids["AI-WEEK02"],
        datetime.fromisoformat(week_.json()["since"]),
    )
    assert _values(run) == [r["sum_value"] for r in sums]

    month = (await api.get("/api/stats/series", params={"range": "30d"})).json()
    assert month["source"] == "daily" and month["device"] is None
    # The fleet: every device's series, one point per UTC day it has data; the pump that
    # reports only its relay state shows its run time per day from the daily rollups.
    assert {(s["device"], s["type"]) for s in month["series"]} == {
        (k, "pump_runtime_s" if s.type == "pump_on" else s.type)
        for k, ss in FLEET.items()
        for s in ss
    }
    daily = await pool.fetch(
        "SELECT pump_runtime_s FROM rollup_daily WHERE device_id = $1 ORDER BY day",
        week.ids[FIRST],
    )
    assert _values(_of(month, "pump_runtime_s")) == [r["pump_runtime_s"] for r in daily]
    assert all(r["pump_runtime_s"] > 0 for r in daily)
    per_day = await pool.fetch(
        "SELECT date_trunc('day', hour, 'UTC') AS day, sum(sum_value) AS s FROM rollup_hourly"
        " WHERE device_id = $1 AND series = 'pump_runtime_s' GROUP BY 1 ORDER BY 1",
        week.ids["AI-WEEK02"],
    )
    assert _values(_of(month, "pump_runtime_s", "AI-WEEK02")) == [r["s"] for r in per_day]
    days = await pool.fetchval(
        "SELECT count(DISTINCT date_trunc('day', hour, 'UTC')) FROM rollup_hourly"
        " WHERE device_id = $1 AND series = 'soil_moisture_pct'",
        week.ids[FIRST],
    )
    assert len(_values(_of(month, "soil_moisture_pct"))) == days >= 7
    assert (await api.get("/api/stats/series", params={"range": "2w"})).status_code == 422


async def test_acknowledge_an_alert(
    api: httpx.AsyncClient, pool: asyncpg.Pool, keys: FleetKeys
) -> None:
    week = await fill(pool, Topics())
    path = f"/api/alerts/{week.alert_id}/ack"
    assert (await api.post(path)).status_code == 401
    bad = await api.post(path, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 403
    assert await pool.fetchval("SELECT acked_at FROM alert WHERE id = $1", week.alert_id) is None

    auth = {"Authorization": f"Bearer {keys.operator_token}"}
    ok = await api.post(path, headers=auth)
    assert ok.status_code == 200 and ok.json()["state"] == "open"
    acked = await pool.fetchval("SELECT acked_at FROM alert WHERE id = $1", week.alert_id)
    assert acked is not None and datetime.fromisoformat(ok.json()["acked_at"]) == acked
    again = await api.post(path, headers=auth)  # idempotent: the first time stays
    assert again.status_code == 200
    assert await pool.fetchval("SELECT acked_at FROM alert WHERE id = $1", week.alert_id) == acked
    listed = (await api.get("/api/alerts", params={"state": "open"})).json()
    assert [(a["id"], a["acked_at"] is not None) for a in listed] == [(week.alert_id, True)]

    await pool.execute(
        "UPDATE alert SET state = 'closed', closed_at = now() WHERE id = $1", week.alert_id
    )
    closed = await pool.fetchval(
        "INSERT INTO alert (kind, subject, state, opened_at, closed_at)"
        " VALUES ('device_offline', 'AI-X', 'closed', now(), now()) RETURNING id"
    )
    assert (await api.post(f"/api/alerts/{closed}/ack", headers=auth)).status_code == 409
    assert (await api.post("/api/alerts/999999/ack", headers=auth)).status_code == 404
    # The dashboard's panel lists it under closed, acknowledged before it closed.
    panel = (await api.get("/fragments/alerts")).text
    assert 'data-alerts-open="0"' in panel and 'data-alerts-closed="2"' in panel


async def test_static_assets_are_the_vendored_uplot(api: httpx.AsyncClient) -> None:
    for name in ("uPlot.iife.min.js", "uPlot.min.css"):
        r = await api.get(f"/static/uplot/{name}")
        assert r.status_code == 200
        # The same bytes as npm's package (package.json pins the version).
        npm = (ROOT / "node_modules" / "uplot" / "dist" / name).read_bytes()
        assert hashlib.sha256(r.content).digest() == hashlib.sha256(npm).digest()
    assert (await api.get("/static/dash.js")).headers["content-type"].startswith("text/javascript")
    for bad in ("/static/../routes.py", "/static/uplot/LICENSE", "/static/%2e%2e/queries.py"):
        assert (await api.get(bad)).status_code == 404


async def test_one_deploy_log_api(api: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    """Issue 15: /api/deploy-log is the deploy log; the OTA area no longer has its own."""
    await fill(pool, Topics())
    body = (await api.get("/api/deploy-log", params={"device": FIRST})).json()
    assert [e["state"] for e in body["items"]] == ["booted_ok", "received"]
    assert (await api.get("/api/ota/deploy-log")).status_code == 404
