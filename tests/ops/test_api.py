"""The operator JSON API and the server-rendered dashboard, on data the real ingest stored."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx

from picofleet.core.credentials import FleetKeys
from tests.helpers import metric

T0 = 1_763_000_000  # 2025-11-13, a fixed clock for the readings


def event(device: int, kind: str, value: Any, t: float) -> dict[str, Any]:
    return {"device_id": device, "event_type": kind, "value": value, "timestamp": t}


async def ingest(api: httpx.AsyncClient, events: list[dict[str, Any]] | bytes) -> list[Any]:
    if isinstance(events, bytes):
        r = await api.post("/ingest", content=events)
    else:
        r = await api.post("/ingest", json=events)
    assert r.status_code == 200, r.text
    return list(r.json())


async def seed(api: httpx.AsyncClient) -> None:
    """Device 3: ten battery readings a minute apart; device 4: platform heights."""
    await ingest(api, [event(3, "battery_charge", 50 + i, T0 + 60 * i) for i in range(10)])
    await ingest(
        api,
        [event(4, "platform_height_mm", h, T0 + 30 * i) for i, h in enumerate((10, 20, 30))],
    )


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


async def test_telemetry_pages_cover_every_row_once_newest_first(api: httpx.AsyncClient) -> None:
    await seed(api)
    seen: list[dict[str, Any]] = []
    before: int | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"device": "3", "limit": 4}
        if before is not None:
            params["before_id"] = before
        body = (await api.get("/api/telemetry", params=params)).json()
        seen += body["items"]
        pages += 1
        before = body["next_before_id"]
        if before is None:
            break
    assert pages == 3
    ids = [r["id"] for r in seen]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 10
    assert sorted(r["value"] for r in seen) == [float(50 + i) for i in range(10)]
    assert {r["device_key"] for r in seen} == {"3"} and {r["unit"] for r in seen} == {"%"}


async def test_telemetry_time_and_type_filters(api: httpx.AsyncClient) -> None:
    await seed(api)
    # since is inclusive, until exclusive: readings 2, 3 and 4
    r = await api.get(
        "/api/telemetry", params={"device": "3", "since": iso(T0 + 120), "until": iso(T0 + 300)}
    )
    assert sorted(i["value"] for i in r.json()["items"]) == [52.0, 53.0, 54.0]
    # epoch seconds work as well as ISO 8601
    r = await api.get("/api/telemetry", params={"since": T0 + 480})
    assert sorted(i["value"] for i in r.json()["items"]) == [58.0, 59.0]
    r = await api.get("/api/telemetry", params={"type": "platform_height_mm"})
    items = r.json()["items"]
    assert [i["value"] for i in items] == [30.0, 20.0, 10.0]
    assert {i["device_key"] for i in items} == {"4"}
    r = await api.get("/api/telemetry", params={"device": "no-such-device"})
    assert r.json() == {"items": [], "next_before_id": None}
    assert (await api.get("/api/telemetry", params={"limit": 0})).status_code == 422
    assert (await api.get("/api/telemetry", params={"since": "yesterday"})).status_code == 422


async def test_devices_and_one_device_with_series(api: httpx.AsyncClient) -> None:
    await seed(api)
    devices = {d["device_key"]: d for d in (await api.get("/api/devices")).json()}
    assert set(devices) == {"3", "4"}
    assert devices["3"]["battery_pct"] == 59.0
    assert devices["4"]["battery_pct"] is None
    assert devices["3"]["online"] is True  # just seen, never said offline
    one = (await api.get("/api/devices/3", params={"points": 5})).json()
    (series,) = one["series"]
    assert series["type"] == "battery_charge" and series["unit"] == "%"
    assert [p[1] for p in series["points"]] == [55.0, 56.0, 57.0, 58.0, 59.0]  # newest 5, in order
    assert (await api.get("/api/devices/nope")).status_code == 404


async def test_metric_views(api: httpx.AsyncClient) -> None:
    await seed(api)
    await ingest(
        api, [event(5, "platform_extension_mm", v, T0 + i) for i, v in enumerate((-5, 5, 10, 2))]
    )
    names = (await api.get("/api/metrics")).json()
    assert names["battery_summary"] == "metric_battery_summary"
    (battery,) = (await api.get("/api/metrics/battery_summary")).json()
    assert battery["device_key"] == "3"
    assert (battery["min_pct"], battery["max_pct"], battery["avg_pct"]) == (50.0, 59.0, 54.5)
    (height,) = (await api.get("/api/metrics/metric_platform_height")).json()
    assert (height["device_key"], height["max_height_mm"]) == ("4", 30.0)
    (moves,) = (await api.get("/api/metrics/extension_vs_retraction")).json()
    assert (moves["extensions"], moves["retractions"]) == (2, 1)
    (switches,) = (await api.get("/api/metrics/side_switches")).json()
    assert switches["left_to_right"] == 1
    assert (await api.get("/api/metrics/avg_extension_mm")).json()[0]["device_key"] == "5"
    assert (await api.get("/api/metrics/drop_table")).status_code == 404


async def test_errors_carry_code_and_raw_payload(api: httpx.AsyncClient) -> None:
    await ingest(api, [event(3, "battery_charge", "high", T0)])
    await ingest(api, b"<script>alert(1)</script>")
    await ingest(api, [event(3, "battery_charge", 250, T0)])
    body = (await api.get("/api/errors")).json()
    codes = [e["code"] for e in body["items"]]
    assert codes == ["out_of_range", "invalid_json", "validation_error"]
    assert body["items"][1]["payload"] == "<script>alert(1)</script>"
    assert '"high"' in body["items"][2]["payload"]
    page = (await api.get("/api/errors", params={"limit": 2})).json()
    rest = (await api.get("/api/errors", params={"before_id": page["next_before_id"]})).json()
    assert [e["code"] for e in page["items"] + rest["items"]] == codes
    only = (await api.get("/api/errors", params={"code": "invalid_json"})).json()["items"]
    assert [e["code"] for e in only] == ["invalid_json"]


async def test_deploy_log_pages(api: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    await pool.executemany(
        "INSERT INTO deploy_event (device_key, version, state, source, seq) "
        "VALUES ($1, '1.1.0', $2, 'ota', $3)",
        [("AI-1", s, i) for i, s in enumerate(("received", "applied", "booted_ok"))]
        + [("AI-2", "failed", 1)],
    )
    body = (await api.get("/api/deploy-log", params={"device": "AI-1", "limit": 2})).json()
    assert [e["state"] for e in body["items"]] == ["booted_ok", "applied"]
    rest = (
        await api.get(
            "/api/deploy-log", params={"device": "AI-1", "before_id": body["next_before_id"]}
        )
    ).json()
    assert [e["state"] for e in rest["items"]] == ["received"]
    assert rest["items"][0]["detail"] == {}


async def test_delete_device_needs_the_operator_token(
    api: httpx.AsyncClient, keys: FleetKeys
) -> None:
    await seed(api)
    await ingest(api, [event(3, "battery_charge", "high", T0)])
    r = await api.delete("/api/devices/3")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = await api.delete("/api/devices/3", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401
    wrong = FleetKeys(b"another-fleet-secret-0123456789").operator_token
    r = await api.delete("/api/devices/3", headers={"Authorization": f"Bearer {wrong}"})
    assert r.status_code == 403
    assert (await api.get("/api/devices/3")).status_code == 200  # untouched
    auth = {"Authorization": f"Bearer {keys.operator_token}"}
    r = await api.delete("/api/devices/3", headers=auth)
    assert r.status_code == 200
    assert r.json() == {
        "device_key": "3",
        "devices": 1,
        "raw_records": 10,  # the rejected one carries no device key (no valid fact)
        "facts": 10,
        "deploy_events": 0,
    }
    assert (await api.get("/api/devices/3")).status_code == 404
    assert (await api.get("/api/telemetry", params={"device": "3"})).json()["items"] == []
    assert (await api.get("/api/errors", params={"device": "3"})).json()["items"] == []
    assert (await api.get("/api/devices/4")).status_code == 200  # others untouched
    assert (await api.delete("/api/devices/3", headers=auth)).status_code == 404


async def test_openapi_documents_the_api(api: httpx.AsyncClient) -> None:
    schema = (await api.get("/openapi.json")).json()
    for path in ("/api/devices", "/api/telemetry", "/api/errors", "/api/deploy-log"):
        assert path in schema["paths"]
    delete = schema["paths"]["/api/devices/{key}"]["delete"]
    assert delete["security"] == [{"HTTPBearer": []}]


async def test_docs_page_loads_nothing_from_another_host(api: httpx.AsyncClient) -> None:
    """The Pi's LAN may have no internet: every asset of /docs comes from the hub."""
    page = await api.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", page.text)
    assert urls, page.text
    for url in urls:
        assert url.startswith("/"), f"{url} is not served by the hub"
        if url != "/openapi.json":
            asset = await api.get(url)
            assert asset.status_code == 200 and len(asset.content) > 100, url


async def test_dashboard_pages_escape_what_devices_send(api: httpx.AsyncClient) -> None:
    await seed(api)
    await ingest(api, b'{"device_id": 3, "event_type": "<img src=x onerror=alert(1)>"')
    await ingest(api, b"<script>alert(1)</script>")
    html = (await api.get("/")).text
    assert 'id="fleet"' in html and 'href="/devices/3"' in html and 'href="/devices/4"' in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert(1)" not in html and "<img src=x" not in html
    assert "cdn" not in html.lower() and "http://" not in html and "https://" not in html
    assert re.search(r'data-after="\d+"', html)
    page = (await api.get("/devices/3")).text
    assert "<svg" in page and "<polyline" in page and 'data-device="3"' in page
    assert (await api.get("/devices/nope")).status_code == 404
    rows = (await api.get("/fragments/fleet")).text
    assert rows.count("<tr") == 2
    charts = (await api.get("/devices/4/fragments/charts")).text
    assert charts.count("<svg") == 1 and "platform_height_mm" in charts


async def test_counters_and_ops_metrics(api: httpx.AsyncClient) -> None:
    await seed(api)
    await ingest(api, b"nope")
    counters = (await api.get("/api/counters")).json()
    assert counters["devices"] == 2 and counters["online"] == 2 and counters["errors_24h"] == 1
    text = (await api.get("/metrics")).text  # one /metrics: /metrics/ops is merged into it
    assert metric(text, "picofleet_devices", state="online") == 2
    assert metric(text, "picofleet_ops_db_scrape_ok") == 1
    assert metric(text, "picofleet_db_pool_connections", state="max") == 4
    assert (await api.get("/metrics/ops")).status_code == 404


async def test_rollouts_show_per_wave_progress(api: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    if not await pool.fetchval("SELECT to_regclass('ota_rollout_device') IS NOT NULL"):
        assert (await api.get("/api/rollouts")).json() == []
        return
    rel = await pool.fetchval(
        "INSERT INTO ota_release (device_type, version, semver, sha256, size, manifest, sig, "
        "key_id) VALUES ('pico_w', '1.1.0', '{1,1,0}', repeat('a', 64), 10, '{}', 's', 'k') "
        "RETURNING id"
    )
    rid = await pool.fetchval(
        "INSERT INTO ota_rollout (release_id, device_type, version, kind, channel, action, "
        "waves, max_failure_rate, min_booted, min_devices, soak_s, timeout_s, meta) VALUES "
        "($1, 'pico_w', '1.1.0', 'waves', 'stable', 'install', '{10,50,100}', 0.2, 0.9, 1, 0, "
        "60, 'signed meta') RETURNING id",
        rel,
    )
    members = [
        ("a", 0, "booted_ok"),
        ("b", 1, "booted_ok"),
        ("c", 1, "failed"),
        ("d", 2, "pending"),
    ]
    await pool.executemany(
        "INSERT INTO ota_rollout_device (rollout_id, device_key, wave, state) "
        "VALUES ($1, $2, $3, $4)",
        [(rid, k, w, s) for k, w, s in members],
    )
    (ro,) = (await api.get("/api/rollouts")).json()
    assert ro["rollout"]["version"] == "1.1.0" and "meta" not in ro["rollout"]
    assert [(w["wave"], w["states"], w["total"]) for w in ro["waves"]] == [
        ("1 (10%)", {"booted_ok": 1}, 1),
        ("2 (50%)", {"booted_ok": 1, "failed": 1}, 2),
        ("3 (100%)", {"pending": 1}, 1),
    ]
    html = (await api.get("/")).text
    assert 'id="rollouts"' in html and "seg-failed" in html and "2 (50%)" in html
    assert metric((await api.get("/metrics")).text, "picofleet_rollouts", state="running") == 1
