"""Issue 16: Home Assistant MQTT discovery against the real brokers (embedded amqtt, Mosquitto).

A device publishes its status (with a last will) and telemetry; an operator's client, standing
in for Home Assistant, sees retained discovery configs that validate against a JSON schema
written from Home Assistant's documented keys, sees the values change on the state topics,
sees availability flip when the device dies, and sees every entity removed when the device is
blocked or deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jsonschema
import pytest

from picofleet.core import endpoints
from picofleet.core.credentials import OPERATOR_USER, FleetKeys
from picofleet.core.settings import Settings
from picofleet.core.topics import Kind
from tests.conftest import RunningHub, running_hub
from tests.helpers import Client, metric, wait_for

SCHEMA = json.loads((Path(__file__).parent / "ha_mqtt_discovery.schema.json").read_text())
KEY = "AI-HA0001"
LEGACY = "7"
PREFIX = "homeassistant"
BROKERS = ["amqtt", "mosquitto"]
TASK = "homeassistant[0]"  # the loop, as the hub's supervisor names it in /metrics


def test_schema_is_valid_and_not_vacuous() -> None:
    """The schema is a valid 2020-12 schema and refuses what Home Assistant refuses."""
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    good = {
        "name": "Soil moisture",
        "unique_id": "picofleet_x_soil",
        "state_topic": "picofleet/state/x/soil_moisture_pct",
        "device": {"identifiers": ["picofleet_x"], "name": "x"},
        "device_class": "moisture",
        "unit_of_measurement": "%",
    }
    validate("sensor", good)
    bad: list[tuple[str, dict[str, Any]]] = [
        ("sensor", {k: v for k, v in good.items() if k != "unique_id"}),
        ("sensor", {k: v for k, v in good.items() if k != "state_topic"}),
        ("sensor", {**good, "device": {"name": "no identifiers"}}),
        ("sensor", {**good, "unit_of_measurement": "degC"}),  # moisture is in %
        ("sensor", {**good, "device_class": "temperature", "unit_of_measurement": "degC"}),
        ("sensor", {**good, "stat_topic": "typo"}),
        ("sensor", {**good, "state_topic": "picofleet/state/+/x"}),
        ("binary_sensor", {**good, "device_class": "moisture"}),
        ("button", {**good, "command_topic": "x"}),  # a button has no state topic
    ]
    for component, config in bad:
        with pytest.raises(jsonschema.ValidationError):
            validate(component, config)


def test_discovery_prefix_is_a_clean_topic_prefix() -> None:
    assert Settings(ha_discovery_prefix="/ha/").ha_discovery_prefix == "ha"
    for wrong in ("", "/", "ha/#", "+"):
        with pytest.raises(ValueError):
            Settings(ha_discovery_prefix=wrong)


def validate(component: str, config: dict[str, Any]) -> None:
    schema = {**SCHEMA, "$ref": f"#/$defs/{component}"}
    jsonschema.Draft202012Validator(schema).validate(config)


def envelope(seq: int, **values: float) -> bytes:
    readings = [{"type": t, "value": v} for t, v in values.items()]
    body = {"v": 1, "seq": seq, "ts": 1_765_000_000 + seq, "readings": readings}
    return json.dumps(body).encode()


class Watcher(Client):
    """Home Assistant's view: the latest retained payload per topic."""

    def latest(self) -> dict[str, bytes]:
        with self._lock:
            return dict(self.messages)

    async def value(self, topic: str, want: Callable[[bytes | None], bool]) -> bytes | None:
        async def check() -> tuple[bytes | None] | None:
            got = self.latest().get(topic)
            return (got,) if want(got) else None

        return (await wait_for(check, timeout=20))[0]


@contextlib.asynccontextmanager
async def hub_on(
    broker: str, settings: Settings, mosquitto_factory: Any
) -> AsyncIterator[tuple[RunningHub, int, int]]:
    """The hub with discovery on; yields it, the port devices connect to and the port Home
    Assistant (an operator's login) connects to."""
    s = settings.model_copy(update={"ha_discovery": True, "ha_poll_s": 0.1})
    if broker == "amqtt":
        async with running_hub(s) as hub:
            yield hub, s.mqtt_port, s.mqtt_port
        return
    mosq = await mosquitto_factory([KEY, LEGACY])
    s = s.model_copy(update={"mqtt_url": f"mqtt://127.0.0.1:{mosq.hub_port}"})
    async with running_hub(s, embedded_broker=False) as hub:
        yield hub, mosq.port, mosq.hub_port


# The embedded broker runs in this loop: the blocking test client works in a thread.
async def connect(client: Client) -> None:
    assert await asyncio.to_thread(client.connect), f"broker refused: {client.rc}"


async def subscribe(client: Client, topic: str) -> None:
    await asyncio.to_thread(client.subscribe, topic)


async def publish(client: Client, topic: str, payload: bytes | str, retain: bool = False) -> None:
    await asyncio.to_thread(client.publish, topic, payload, 1, retain)


@pytest.mark.parametrize("broker", BROKERS)
async def test_discovery_values_availability_and_removal(
    broker: str, settings: Settings, keys: FleetKeys, mosquitto_factory: Any, pool: asyncpg.Pool
) -> None:
    async with hub_on(broker, settings, mosquitto_factory) as (hub, device_port, ha_port):
        t = hub.topics
        status = t.device(KEY, Kind.STATUS)
        ha = Watcher(ha_port, OPERATOR_USER, keys.role_password(OPERATOR_USER), OPERATOR_USER)
        await connect(ha)
        await subscribe(ha, f"{PREFIX}/#")
        await subscribe(ha, f"{t.prefix}/state/#")
        await subscribe(ha, status)

        dev = Client(device_port, KEY, keys.device_password(KEY), client_id=KEY)
        dev.c.will_set(status, b'{"state":"offline"}', qos=1, retain=True)
        await connect(dev)
        await publish(dev, status, b'{"state":"online","fw":"1.4.0"}', retain=True)
        await publish(
            dev,
            t.device(KEY, Kind.TELEMETRY),
            envelope(1, soil_moisture_pct=41.2, pump_on=1, temperature_c=21.5),
        )
        # A legacy sender over HTTP: sensors, but no status topic, so no availability and
        # no command buttons.
        async with httpx.AsyncClient(base_url=hub.http) as http:
            body = {"device_id": 7, "event_type": "battery_charge", "value": 55, "timestamp": 1.7e9}
            assert (await http.post("/ingest", json=body)).json()[0]["status"] == "ok"

        node = f"{PREFIX}/{{}}/picofleet_{KEY}/{{}}/config"
        expected = {
            node.format("sensor", "soil_moisture_pct"): "sensor",
            node.format("binary_sensor", "pump_on"): "binary_sensor",
            node.format("sensor", "temperature_c"): "sensor",
            node.format("button", "reboot"): "button",
            node.format("button", "pump_run"): "button",
            node.format("button", "pump_stop"): "button",
            f"{PREFIX}/sensor/picofleet_{LEGACY}/battery_charge/config": "sensor",
        }

        async def all_configs() -> dict[str, bytes] | None:
            got = ha.latest()
            return got if all(got.get(k) for k in expected) else None

        got = await wait_for(all_configs, timeout=20)
        configs = {k: json.loads(got[k]) for k in expected}
        for topic, component in expected.items():
            validate(component, configs[topic])
        assert sorted(k for k in got if k.startswith(f"{PREFIX}/")) == sorted(expected)

        soil = configs[node.format("sensor", "soil_moisture_pct")]
        assert soil["state_topic"] == f"{t.prefix}/state/{KEY}/soil_moisture_pct"
        assert (soil["device_class"], soil["unit_of_measurement"]) == ("moisture", "%")
        assert soil["device"]["identifiers"] == [f"picofleet_{KEY}"]
        assert soil["device"]["sw_version"] == "1.4.0"
        public = endpoints.public_url(hub.settings)
        assert soil["device"]["configuration_url"] == f"{public}/devices/{KEY}"
        assert soil["availability"][0]["topic"] == status
        temp = configs[node.format("sensor", "temperature_c")]
        assert (temp["device_class"], temp["unit_of_measurement"]) == ("temperature", "°C")
        pump = configs[node.format("binary_sensor", "pump_on")]
        assert pump["device_class"] == "running"
        run = configs[node.format("button", "pump_run")]
        assert run["command_topic"] == t.device(KEY, Kind.CMD)
        assert json.loads(run["payload_press"]) == {"cmd": "pump", "seconds": 10}
        legacy = configs[f"{PREFIX}/sensor/picofleet_{LEGACY}/battery_charge/config"]
        assert "availability" not in legacy and legacy["device_class"] == "battery"
        assert len({c["unique_id"] for c in configs.values()}) == len(expected)

        async with httpx.AsyncClient(base_url=hub.http) as http:
            text = (await http.get("/metrics")).text
        assert metric(text, "picofleet_task_up", task=TASK) == 1
        assert metric(text, "picofleet_ha_entities") == 4  # 3 of the device, 1 legacy

        # Values flow, and change when the device publishes again.
        soil_state, pump_state = soil["state_topic"], pump["state_topic"]
        await ha.value(soil_state, lambda v: v == b"41.2")
        await ha.value(pump_state, lambda v: v == b"ON")
        await ha.value(f"{t.prefix}/state/{LEGACY}/battery_charge", lambda v: v == b"55")
        await publish(
            dev, t.device(KEY, Kind.TELEMETRY), envelope(2, soil_moisture_pct=38, pump_on=0)
        )
        await ha.value(soil_state, lambda v: v == b"38")
        await ha.value(pump_state, lambda v: v == b"OFF")

        # Pressing a button publishes its payload on the device's cmd topic; the operator's
        # login (Home Assistant's) may do that, and the device receives it.
        await subscribe(dev, t.device(KEY, Kind.CMD))
        await publish(ha, run["command_topic"], run["payload_press"])
        cmd_seen = await wait_for(
            _async(lambda: [p for tp, p in dev.messages if tp == run["command_topic"]])
        )
        assert json.loads(cmd_seen[0]) == {"cmd": "pump", "seconds": 10}

        # Availability: the device dies without DISCONNECT; its last will says offline.
        availability = soil["availability"][0]
        await ha.value(status, lambda v: v is not None and b"online" in v)
        sock = dev.c.socket()
        assert isinstance(sock, socket.socket)
        dev.c.loop_stop()
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        will = await ha.value(status, lambda v: v is not None and b"offline" in v)
        assert will is not None
        assert json.loads(will)["state"] == availability["payload_not_available"]

        # Retired: blocked (the device) and deleted (the legacy sender) -> every entity gone.
        await pool.execute("UPDATE device SET blocked = true WHERE device_key = $1", KEY)
        async with httpx.AsyncClient(base_url=hub.http) as http:
            auth = {"Authorization": f"Bearer {keys.operator_token}"}
            assert (await http.delete(f"/api/devices/{LEGACY}", headers=auth)).status_code == 200
        for topic in [*expected, soil_state, pump_state]:
            await ha.value(topic, lambda v: v == b"")
        # Forgotten once removed (published first, so a crash in between removes again).
        await wait_for(_async_db(pool, "SELECT count(*) = 0 FROM ha_entity"))

        # A late subscriber (Home Assistant starting now) gets no retained config at all.
        late = Watcher(ha_port, OPERATOR_USER, keys.role_password(OPERATOR_USER), OPERATOR_USER)
        await connect(late)
        await subscribe(late, f"{PREFIX}/#")
        await publish(late, f"{t.prefix}/devices/{KEY}/cmd", b"{}")  # a round trip: retained came
        assert [tp for tp, p in late.latest().items() if p] == []
        late.close()
        ha.close()


def _async_db(pool: asyncpg.Pool, query: str) -> Callable[[], Any]:
    async def check() -> Any:
        return await pool.fetchval(query)

    return check


def _async(fn: Callable[[], Any]) -> Callable[[], Any]:
    async def check() -> Any:
        return fn()

    return check


async def test_discovery_is_off_by_default(
    settings: Settings, keys: FleetKeys, pool: asyncpg.Pool
) -> None:
    assert Settings.model_fields["ha_discovery"].default is False
    async with running_hub(settings) as hub, httpx.AsyncClient(base_url=hub.http) as http:
        body = {"device_id": 7, "event_type": "battery_charge", "value": 55, "timestamp": 1.7e9}
        assert (await http.post("/ingest", json=body)).status_code == 200
        text = (await http.get("/metrics")).text
        assert f'task="{TASK}"' not in text  # no discovery loop at all
        assert "picofleet_ha_entities" not in text
    assert await pool.fetchval("SELECT count(*) FROM ha_entity") == 0


async def test_a_failing_database_is_retried_not_fatal(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """The loop outlives database errors without spending the supervisor's restarts (five
    of them stop the whole hub), and catches up when the database answers again."""
    s = settings.model_copy(update={"ha_discovery": True, "ha_poll_s": 0.05})
    async with running_hub(s) as hub, httpx.AsyncClient(base_url=hub.http) as http:
        await pool.execute("REVOKE SELECT ON ha_entity FROM picofleet_runtime")

        async def scrape() -> str:
            return (await http.get("/metrics")).text

        async def failing() -> bool:
            return metric(await scrape(), "picofleet_ha_tick_failures_total") >= 10

        await wait_for(failing)
        await pool.execute("GRANT SELECT ON ha_entity TO picofleet_runtime")
        body = {"device_id": 7, "event_type": "battery_charge", "value": 55, "timestamp": 1.7e9}
        assert (await http.post("/ingest", json=body)).json()[0]["status"] == "ok"

        async def announced() -> bool:
            text = await scrape()
            return "picofleet_ha_entities" in text and metric(text, "picofleet_ha_entities") == 1

        await wait_for(announced)
        text = await scrape()
        assert metric(text, "picofleet_task_restarts_total", task=TASK) == 0
        assert metric(text, "picofleet_task_up", task=TASK) == 1


async def test_facts_committed_behind_the_watermark_are_announced(
    settings: Settings, pool: asyncpg.Pool, db_url: str
) -> None:
    """A transaction that took its fact id first but commits last (a big bridge batch beside
    a POST /ingest) is not skipped: its device still reaches Home Assistant."""
    s = settings.model_copy(update={"ha_discovery": True, "ha_poll_s": 0.05})
    async with running_hub(s) as hub, httpx.AsyncClient(base_url=hub.http) as http:
        slow = await asyncpg.connect(db_url)
        try:
            tx = slow.transaction()
            await tx.start()
            dev_id = await slow.fetchval(
                "INSERT INTO device (device_key) VALUES ('8') RETURNING id"
            )
            raw_id = await slow.fetchval(
                "INSERT INTO raw_record (received_at, source, topic, payload, payload_size) "
                "VALUES (now(), 'http', 'picofleet/ingest', '\\x7b7d', 2) RETURNING id"
            )
            await slow.execute(
                "INSERT INTO processed_record (raw_id, device_id, record_type_id, record_time, "
                "value) SELECT $1, $2, id, now(), 40 FROM record_type WHERE name = 'humidity_pct'",
                raw_id,
                dev_id,
            )
            body = {"device_id": 7, "event_type": "battery_charge", "value": 55, "timestamp": 1.7e9}
            assert (await http.post("/ingest", json=body)).json()[0]["status"] == "ok"
            # The later id is announced while the earlier one is still uncommitted.
            await wait_for(_async_db(pool, "SELECT count(*) = 1 FROM ha_entity"))
            await tx.commit()
        finally:
            await slow.close()
        await wait_for(
            _async_db(
                pool,
                "SELECT count(*) = 1 FROM ha_entity "
                "WHERE device_key = '8' AND record_type = 'humidity_pct'",
            )
        )
