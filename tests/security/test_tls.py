"""Issue 17, hub side: nothing in the clear.

The hub's CA is made once and its keys are private; our clients refuse a server whose
certificate is from another CA or expired; plain MQTT is not reachable from another address
by default; a capture of the device path holds no device password; the API speaks HTTPS off
loopback. Real brokers, the real hub, real sockets.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import ssl
import stat
import urllib.error
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cryptography import x509
from structlog.testing import capture_logs

from picofleet.broker.policy import Policy
from picofleet.broker.tap import Tap
from picofleet.core.credentials import OPERATOR_USER, FleetKeys
from picofleet.core.endpoints import lan_address
from picofleet.core.mqttclient import (
    ConnectFailed,
    MqttError,
    MqttSession,
    MqttTarget,
)
from picofleet.core.settings import Settings
from picofleet.core.tls import (
    TlsFiles,
    ensure_tls,
    make_ca,
    make_server_cert,
    server_context,
    tls_hosts,
)
from picofleet.core.topics import Kind
from picofleet.ops.api import HubApi
from tests.conftest import running_hub
from tests.faults import TcpProxy
from tests.helpers import Client, free_port, wait_for

KEY = "AI-TLS0001"


def telemetry(seq: int = 1) -> bytes:
    return f'{{"v":1,"seq":{seq},"readings":[{{"type":"temp_c","value":21.5}}]}}'.encode()


# -- the CA -------------------------------------------------------------------------------------
def test_the_ca_is_made_once_with_private_keys(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    files = ensure_tls(settings)
    ca = files.ca_cert.read_bytes()
    for key in (files.key, files.ca_cert.with_name("ca.key")):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600, key
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    got = {str(n.value) for n in names}
    assert {"localhost", "127.0.0.1", lan_address()} <= got
    assert set(tls_hosts(settings)) == got

    again = ensure_tls(settings)
    assert again == files and files.ca_cert.read_bytes() == ca
    assert files.cert.read_bytes() == again.cert.read_bytes(), "a good certificate is kept"

    # New names: a new server certificate from the same CA.
    moved = settings.model_copy(update={"tls_hosts": ["pi.example", "10.1.2.3"]})
    before = files.cert.read_bytes()
    ensure_tls(moved)
    assert files.ca_cert.read_bytes() == ca
    assert files.cert.read_bytes() != before


def test_an_expiring_server_certificate_is_renewed(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, tls_hosts=["127.0.0.1"])
    files = ensure_tls(settings)
    key = files.ca_cert.with_name("ca.key").read_bytes()
    cert, _ = make_server_cert(files.ca_cert.read_bytes(), key, ["127.0.0.1"], days=10)
    files.cert.write_bytes(cert)
    ensure_tls(settings)
    renewed = x509.load_pem_x509_certificate(files.cert.read_bytes())
    assert renewed.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=300)


def test_the_operators_own_certificate_is_used_as_given(tmp_path: Path) -> None:
    ca, ca_key = make_ca("their CA")
    cert, key = make_server_cert(ca, ca_key, ["hub.example"])
    for name, data in (("ca.pem", ca), ("c.pem", cert), ("k.pem", key)):
        (tmp_path / name).write_bytes(data)
    settings = Settings(
        data_dir=tmp_path / "data",
        tls_cert=tmp_path / "c.pem",
        tls_key=tmp_path / "k.pem",
        tls_ca=tmp_path / "ca.pem",
    )
    files = ensure_tls(settings)
    assert files == TlsFiles(tmp_path / "ca.pem", tmp_path / "c.pem", tmp_path / "k.pem")
    assert not (tmp_path / "data" / "tls").exists(), "no CA of ours beside theirs"


# -- our clients refuse a server they must not trust ----------------------------------------
def _served(tmp_path: Path, name: str, *, expired: bool = False, other_ca: bool = False) -> Any:
    """(files the server serves, the CA our clients trust)."""
    ours = ensure_tls(Settings(data_dir=tmp_path / "ours", tls_hosts=["127.0.0.1"]))
    d = tmp_path / name
    d.mkdir()
    if other_ca:
        ca, ca_key = make_ca("someone else's CA")
    else:
        ca, ca_key = ours.ca_cert.read_bytes(), ours.ca_cert.with_name("ca.key").read_bytes()
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=30) if expired else None
    cert, key = make_server_cert(
        ca, ca_key, ["127.0.0.1"], days=2 if expired else 30, not_before=start
    )
    (d / "c.pem").write_bytes(cert)
    (d / "k.pem").write_bytes(key)
    return TlsFiles(d / "c.pem", d / "c.pem", d / "k.pem"), ours.ca_cert


@pytest.mark.parametrize("case", ["other CA", "expired", "good"])
async def test_our_clients_refuse_an_untrusted_server(
    tmp_path: Path, policy: Policy, keys: FleetKeys, case: str
) -> None:
    served, trusted = _served(
        tmp_path, "srv", expired=case == "expired", other_ca=case == "other CA"
    )
    port = free_port()
    listener = ("127.0.0.1", port, server_context(served))
    async with Tap(policy=policy, bind="127.0.0.1", port=free_port(), tls=listener):
        target = MqttTarget("127.0.0.1", port, trusted)
        password = keys.role_password(OPERATOR_USER)
        ok = case == "good"

        def tool() -> bool:
            try:
                with MqttSession(
                    target=target,
                    username=OPERATOR_USER,
                    password=password,
                    clean_session=True,
                    manual_ack=False,
                ):
                    return True
            except ConnectFailed as exc:
                assert not exc.refused, "the broker never saw us: the TLS handshake failed"
                assert "certificate verify failed" in exc.reason, exc.reason
                return False

        assert await asyncio.to_thread(tool) is ok
        session = MqttSession(
            target=target,
            username=OPERATOR_USER,
            password=password,
            client_id=f"tls-{case.replace(' ', '-')}",
            clean_session=True,
            manual_ack=False,
        )
        if ok:
            async with session:
                assert session.connected
        else:
            with pytest.raises(MqttError, match="unreachable or untrusted"):
                async with session:
                    pass


# -- the hub: TLS by default, plain on loopback only, HTTPS off loopback --------------------
@pytest.mark.parametrize("broker", ["amqtt", "mosquitto"])
async def test_off_loopback_only_tls_answers(
    settings: Settings, pool: asyncpg.Pool, keys: FleetKeys, broker: str
) -> None:
    """On both brokers; on Mosquitto the bridge's own session crosses TLS too (the hub's
    listener is not on loopback)."""
    lan = lan_address()
    assert lan != "127.0.0.1", "this test needs an address besides loopback"
    wide = settings.model_copy(
        update={"mqtt_bind": "0.0.0.0", "http_bind": "0.0.0.0", "broker": broker}
    )
    # Mosquitto admits only devices the hub knows (its password file).
    await pool.execute("INSERT INTO device (device_key) VALUES ($1)", KEY)
    async with running_hub(wide, keys) as hub:
        s = hub.settings
        ca = s.data_path / "tls" / "ca.pem"
        # Plain MQTT: refused from the LAN address, still there on loopback (mosquitto_sub).
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(lan, s.mqtt_port)
        local = Client(s.mqtt_port, KEY, keys.device_password(KEY))
        assert await asyncio.to_thread(local.connect)
        await asyncio.to_thread(local.close)
        # TLS from the LAN address: the certificate names it, the device's data lands.
        dev = Client(s.mqtts_port, KEY, keys.device_password(KEY), host=lan, ca=ca)
        assert await asyncio.to_thread(dev.connect)
        await asyncio.to_thread(dev.publish, hub.topics.device(KEY, Kind.TELEMETRY), telemetry())
        await asyncio.to_thread(dev.close)

        async def landed() -> bool:
            return await pool.fetchval("SELECT count(*) FROM raw_record") == 1

        await wait_for(landed, timeout=15)
        # HTTPS with the same CA from the LAN; plain HTTP only on loopback.
        status, body = await asyncio.to_thread(
            HubApi(f"https://{lan}:{s.https_port}", ca=ca).call, "GET", "/health"
        )
        assert status == 200 and body["status"] == "ok"
        # Plain HTTP: the whole API on loopback; from the LAN only what devices fetch.
        token = keys.operator_token
        status, _ = await asyncio.to_thread(
            HubApi(f"http://127.0.0.1:{s.http_port}", token).call, "GET", "/api/devices", auth=True
        )
        assert status == 200
        plain = HubApi(f"http://{lan}:{s.http_port}", token)
        assert (await asyncio.to_thread(plain.call, "GET", "/health"))[0] == 200
        assert (await asyncio.to_thread(plain.call, "GET", "/api/devices", auth=True))[0] == 403
        assert (await asyncio.to_thread(plain.call, "POST", "/ingest", [], auth=True))[0] == 403
        with pytest.raises(urllib.error.URLError) as err:  # not our CA: the system's trust
            await asyncio.to_thread(HubApi(f"https://{lan}:{s.https_port}").call, "GET", "/health")
        assert isinstance(err.value.reason, ssl.SSLCertVerificationError)
    assert await pool.fetchval("SELECT count(*) FROM raw_record") == 1


async def test_plain_opened_on_purpose_is_warned_about(settings: Settings, keys: FleetKeys) -> None:
    wide = settings.model_copy(update={"mqtt_bind": "0.0.0.0", "mqtt_plain_open": True})
    with capture_logs() as logged:
        async with running_hub(wide, keys) as hub:
            dev = Client(hub.mqtt_port, KEY, keys.device_password(KEY), host=lan_address())
            assert await asyncio.to_thread(dev.connect)
            await asyncio.to_thread(dev.close)
    assert [e for e in logged if e["event"] == "hub.plain_mqtt_open"]


async def test_a_capture_of_the_device_path_holds_no_password(
    settings: Settings, pool: asyncpg.Pool, keys: FleetKeys
) -> None:
    password = keys.device_password(KEY).encode()

    class Recorder(TcpProxy):
        def __init__(self, port: int) -> None:
            super().__init__("127.0.0.1", port)
            self.seen = bytearray()

        async def _pipe(
            self, r: asyncio.StreamReader, w: asyncio.StreamWriter, *, upstream: bool = False
        ) -> None:
            async def read(n: int = -1) -> bytes:
                data = await reader_read(n)
                self.seen += data
                return data

            reader_read = r.read
            r.read = read  # type: ignore[method-assign]
            await super()._pipe(r, w, upstream=upstream)

    async def send_through(port: int, seq: int, ca: Path | None) -> bytes:
        async with Recorder(port) as proxy:
            dev = Client(proxy.port, KEY, keys.device_password(KEY), ca=ca)
            assert await asyncio.to_thread(dev.connect)
            await asyncio.to_thread(dev.publish, topic, telemetry(seq))
            await asyncio.to_thread(dev.close)
        return bytes(proxy.seen)

    async with running_hub(settings, keys) as hub:
        topic = hub.topics.device(KEY, Kind.TELEMETRY)
        ca = hub.settings.data_path / "tls" / "ca.pem"
        sealed = await send_through(hub.settings.mqtts_port, 1, ca)
        # The same capture on the plain (loopback) port does see it: the recorder works.
        clear = await send_through(hub.settings.mqtt_port, 2, None)

        async def both() -> bool:
            return await pool.fetchval("SELECT count(*) FROM raw_record") == 2

        await wait_for(both, timeout=15)
    assert password in clear and KEY.encode() in clear
    assert len(sealed) > 500, "the capture saw the TLS session"
    assert password not in sealed
    assert b'"readings"' not in sealed


async def test_the_usb_gateway_publishes_over_tls(
    settings: Settings, pool: asyncpg.Pool, keys: FleetKeys
) -> None:
    from picofleet.usb._gateway import broker_endpoint
    from picofleet.usb._publisher import DRAIN_S, device_session

    async with running_hub(settings, keys) as hub:
        target = broker_endpoint(hub.settings)
        assert (target.port, target.tls) == (hub.settings.mqtts_port, True)
        pub = device_session(
            target=target, key=KEY, password=keys.device_password(KEY), queue_max=10
        )
        pub.start()
        try:
            assert pub.queue(hub.topics.device(KEY, Kind.TELEMETRY), telemetry())

            async def landed() -> bool:
                return await pool.fetchval("SELECT count(*) FROM raw_record") == 1

            await wait_for(landed, timeout=15)
        finally:
            await asyncio.to_thread(pub.close, DRAIN_S)
        assert (pub.dropped, pub.unacked) == (0, 0)


def test_the_banner_tails_over_tls(settings: Settings, keys: FleetKeys) -> None:
    from picofleet.hub import Endpoints, banner

    ca = Path("/data/tls/ca.pem")
    ep = Endpoints(
        "postgresql://x@h/db", "127.0.0.1", 1883, 8000, operator_port=8883, ca=ca, tls_ca=ca
    )
    text = banner(settings.model_copy(update={"mqtts_port": 8883}), keys, ep)
    (line,) = [ln for ln in text.splitlines() if "mosquitto_sub" in ln]
    assert f"-p 8883 --cafile {ca}" in line


def test_tls_init_makes_the_ca_for_the_compose_shape(tmp_path: Path) -> None:
    import subprocess

    from tests.helpers import CLI

    env = {"PATH": "/usr/bin:/bin", "PICOFLEET_DATA_DIR": str(tmp_path)}
    args = [*CLI, "tls", "init", "--host", "pi.example", "--host", "10.9.8.7"]
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout
    assert "BEGIN" not in out, "no key or certificate is printed"
    files = ensure_tls(Settings(data_dir=tmp_path, tls_hosts=["pi.example", "10.9.8.7"]))
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(n.value) for n in names} == {"pi.example", "10.9.8.7", "localhost", "127.0.0.1"}
    assert stat.S_IMODE(os.stat(files.key).st_mode) == 0o600
    ca = subprocess.run([*CLI, "tls", "ca"], env=env, capture_output=True, text=True, check=True)
    assert ca.stdout == files.ca_cert.read_text()
