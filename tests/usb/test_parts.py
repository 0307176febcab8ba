"""The USB package's pure parts: serial lines, config.json, discovery, UF2, settings."""

from __future__ import annotations

import json
import shutil
import struct
import threading
import time
from pathlib import Path

import pytest

import picofleet.usb as usb
from picofleet.core.credentials import FleetKeys
from picofleet.core.devconfig import (
    ConfigError,
    OptionsFile,
    build_config,
    load_options_file,
    ota_public_key,
)
from picofleet.core.settings import Settings
from picofleet.core.signing import init_keys
from picofleet.usb._discovery import Mode, bootsel_boards, parse_connect_list
from picofleet.usb._lines import LineKind, LineSplitter, parse_line
from picofleet.usb._settings import UsbSettings
from picofleet.usb._uf2 import RP2040_FAMILY, Uf2Error, check_uf2
from tests.helpers import SECRET

KEY = "E6614103E7452D2F"


def test_public_surface() -> None:
    for name in usb.__all__:
        assert hasattr(usb, name), name
    public = {n for n in vars(usb) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(usb, n)).__name__ == "module"}
    assert public - modules - {"annotations"} == set(usb.__all__)


# -- serial lines ----------------------------------------------------------------------------


def test_line_kinds() -> None:
    good = parse_line(
        b'{"id":"E661","seq":3,"fw":"1.0.0","readings":[{"type":"temperature_c","value":21.5}]}'
    )
    assert good.kind is LineKind.READINGS
    assert (good.device_id, good.device_seq, good.fw) == ("E661", 3, "1.0.0")
    env = json.loads(good.envelope(seq=99, ts=1.5, key="E661"))
    assert env == {
        "v": 1,
        "seq": 99,
        "ts": 1.5,
        "readings": [{"type": "temperature_c", "value": 21.5}],
        "board_seq": 3,
        "fw": "1.0.0",
    }
    # A board that claims another id is reported as such; the hub refuses the mismatch.
    assert json.loads(good.envelope(seq=1, ts=1.0, key="OTHER"))["device"] == "E661"

    csv = parse_line(b" 22.5, ,37.25 ")
    assert csv.kind is LineKind.READINGS
    assert csv.readings == [
        {"type": "temperature_c", "value": 22.5},
        {"type": "soil_moisture_pct", "value": 37.25},
    ]
    hello = parse_line(b'{"hello":1,"id":"E661","fw":"1.0.0","sensors":[]}')
    assert (hello.kind, hello.device_id) == (LineKind.HELLO, "E661")
    assert parse_line(b"  \r").kind is LineKind.SKIP
    for garbage in (
        b"nan,1,2",
        b"1,2",
        b"a,b,c",
        b'{"readings": [',
        b'{"readings": []}',
        b"[1,2]",
        b"\xff\xfe\x00",
        b"Traceback (most recent call last):",
        b">>> ",
    ):
        assert parse_line(garbage).kind is LineKind.RAW, garbage


def test_line_splitter_bounds_lines() -> None:
    s = LineSplitter(max_line=8)
    assert list(s.feed(b"ab")) == []
    assert list(s.feed(b"c\r\nde")) == [b"abc\r"]
    assert list(s.feed(b"fghijklmnop")) == [b"defghijk"]  # cut at 8 bytes
    assert list(s.feed(b"qrs\nok\n")) == [b"ok"]  # the rest of the long line is dropped
    assert s.cut == 1


# -- config.json -----------------------------------------------------------------------------


@pytest.fixture
def hub_settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, public_host="192.168.1.10", mqtt_port=1884, http_port=8001)


def test_pico_w_config_has_derived_credentials_and_merges_layers(hub_settings: Settings) -> None:
    keys = FleetKeys(SECRET.encode())
    existing = {
        "device_key": KEY,
        "mqtt_password": "stale",
        "wifi": {"ssid": "old-net", "password": "old-pass"},
        "calibration": {"moisture_dry": 50000, "moisture_wet": 20000},
        "channel": "Not A Channel!",  # invalid: dropped, the default comes back
    }
    options = OptionsFile.model_validate(
        {
            "telemetry_interval_s": 30,
            "devices": {KEY: {"calibration": {"moisture_wet": 19000}, "channel": "canary"}},
        }
    )
    cfg = build_config(
        key=KEY,
        app="pico_w",
        settings=hub_settings,
        keys=keys,
        existing=existing,
        options=options,
        flags={"wifi": {"ssid": "new-net"}},
        ota_key=("A" * 43 + "=", "0123456789abcdef"),
    )
    data = json.loads(cfg.to_bytes())
    assert data["mqtt_password"] == keys.device_password(KEY)
    assert data["provision_key"] == keys.provision_key(KEY)
    assert data["provision_secret"] is None
    assert data["wifi"] == {"ssid": "new-net", "password": "old-pass"}
    assert data["broker"] == {"host": "192.168.1.10", "port": 1884}
    assert data["hub_http"] == "http://192.168.1.10:8001"
    assert data["calibration"] == {"moisture_dry": 50000, "moisture_wet": 19000}
    assert data["channel"] == "canary"
    assert data["telemetry_interval_s"] == 30
    assert data["ota_key_id"] == "0123456789abcdef"
    assert data["pump"]["max_run_s"] == 30
    assert "sensors" not in data
    assert set(data) >= {"device_key", "prefix", "device_type", "ota_pubkey"}


def test_pico_w_needs_wifi_and_broker(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="wifi and broker"):
        build_config(
            key=KEY,
            app="pico_w",
            settings=Settings(data_dir=tmp_path),
            keys=FleetKeys(b"k" * 32),
            existing=None,
            options=OptionsFile(),
            flags={},
            ota_key=None,
        )


def test_pico_usb_config_carries_no_credentials(hub_settings: Settings) -> None:
    cfg = build_config(
        key=KEY,
        app="pico_usb",
        settings=hub_settings,
        keys=FleetKeys(b"k" * 32),
        existing=None,
        options=OptionsFile.model_validate({"sensors": {"dht": "dht11"}}),
        flags={},
        ota_key=("x", "y"),
    )
    data = json.loads(cfg.to_bytes())
    assert data["mqtt_password"] is None and data["provision_key"] is None
    assert data["wifi"] is None and data["ota_pubkey"] is None
    assert data["sensors"] == {"dht": "dht11", "dht_pin": 15, "moisture_adc_pin": 26}


CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIBSjCB8qAD\n-----END CERTIFICATE-----\n"


def test_the_hub_ca_goes_to_pico_w_boards_only(hub_settings: Settings) -> None:
    def built(app: str, ca_pem: str | None) -> dict[str, object]:
        cfg = build_config(
            key=KEY,
            app=app,
            settings=hub_settings,
            keys=FleetKeys(b"k" * 32),
            existing=None,
            options=OptionsFile.model_validate({"wifi": {"ssid": "net"}}),
            flags={},
            ota_key=None,
            ca_pem=ca_pem,
        )
        data: dict[str, object] = json.loads(cfg.to_bytes())
        return data

    assert built("pico_w", CA_PEM)["ca_pem"] == CA_PEM  # the board then speaks TLS
    assert "ca_pem" not in built("pico_w", None)  # a hub without TLS: plain, as before
    assert "ca_pem" not in built("pico_usb", CA_PEM)  # the gateway publishes for it
    with pytest.raises(ConfigError, match="ca_pem"):
        built("pico_w", "not a certificate")


def test_a_board_given_the_ca_reaches_the_tls_port(hub_settings: Settings) -> None:
    """The plain port listens on the hub's loopback only once it speaks TLS: a Pico W given
    the CA gets the TLS port by default; a broker the board already has, or one the operator
    names, is the operator's choice and stays."""
    s = hub_settings.model_copy(update={"public_host": "hub.lan"})

    def port(existing: dict[str, object] | None, flags: dict[str, object]) -> object:
        cfg = build_config(
            key=KEY,
            app="pico_w",
            settings=s,
            keys=FleetKeys(b"k" * 32),
            existing=existing,
            options=OptionsFile.model_validate({"wifi": {"ssid": "net"}}),
            flags=flags,
            ota_key=None,
            ca_pem=CA_PEM,
        )
        return json.loads(cfg.to_bytes())["broker"]["port"]

    before = {"broker": {"host": "hub.lan", "port": s.mqtt_port}}
    assert port(None, {}) == s.mqtts_port != s.mqtt_port
    assert port(before, {}) == s.mqtt_port
    assert port(before, {"broker": {"host": "hub.lan", "port": 18883}}) == 18883


def test_options_file_refuses_unknown_fields(tmp_path: Path) -> None:
    path = tmp_path / "boards.json"
    path.write_text(json.dumps({"wifi": {"ssid": "x", "pasword": "typo"}}))
    with pytest.raises(ConfigError, match="pasword"):
        load_options_file(path)


def test_ota_public_key_comes_from_the_ota_key_files(tmp_path: Path) -> None:
    assert ota_public_key(tmp_path) is None
    signer = init_keys(tmp_path)
    assert ota_public_key(tmp_path) == (signer.public_b64, signer.key_id)


# -- discovery and settings ------------------------------------------------------------------


def test_connect_list_output() -> None:
    text = (
        "/dev/ttyACM0 E6614103E7452D2F 2e8a:0005 MicroPython Board in FS mode\n"
        "/dev/ttyACM1 None 2e8a:000a Raspberry Pi Pico\n"
        "/dev/ttyS0 None 0000:0000 None None\n"
        "/dev/ttyUSB0 A50285BI 0403:6001 FTDI FT232R\n"
    )
    boards = parse_connect_list(text)
    assert [(b.port, b.serial_number, b.mode, b.vid_pid) for b in boards] == [
        ("/dev/ttyACM0", KEY, Mode.REPL, "2E8A:0005"),
        ("/dev/ttyACM1", None, Mode.OTHER, "2E8A:000A"),
    ]


def test_bootsel_boards_from_sysfs_mounts_and_extra_dirs(tmp_path: Path) -> None:
    sysfs, by_id, drive, extra = (tmp_path / n for n in ("sysfs", "by-id", "drive", "extra"))
    for d, vid, pid, serial in (
        ("1-1", "2e8a", "0003", "E0C9125B0D9B"),  # BOOTSEL, mounted
        ("1-2", "2e8a", "0003", "AAAA"),  # BOOTSEL, not mounted
        ("1-3", "2e8a", "0005", "BBBB"),  # MicroPython: not a BOOTSEL board
    ):
        (sysfs / d).mkdir(parents=True)
        (sysfs / d / "idVendor").write_text(vid + "\n")
        (sysfs / d / "idProduct").write_text(pid + "\n")
        (sysfs / d / "serial").write_text(serial + "\n")
    for d in (drive, extra):
        d.mkdir()
        (d / "INFO_UF2.TXT").write_text(
            "UF2 Bootloader v3.0\nModel: Raspberry Pi RP2\nBoard-ID: RPI-RP2\n"
        )
    by_id.mkdir()
    (tmp_path / "sda1").touch()
    (by_id / "usb-RPI_RP2_E0C9125B0D9B-0:0-part1").symlink_to(tmp_path / "sda1")
    mounts = tmp_path / "mounts"
    mounts.write_text(f"{tmp_path / 'sda1'} {drive} vfat rw 0 0\nproc /proc proc rw 0 0\n")
    boards = bootsel_boards([extra], sysfs=sysfs, mounts_file=mounts, by_id=by_id)
    got = sorted((b.serial_number or "-", str(b.mount) if b.mount else "-") for b in boards)
    assert got == sorted([("E0C9125B0D9B", str(drive)), ("AAAA", "-"), ("-", str(extra))])
    assert all(b.mode is Mode.BOOTSEL and b.chip == "RP2040" for b in boards)


def test_usb_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PICOFLEET_USB_GATEWAY", "1")
    monkeypatch.setenv("PICOFLEET_USB_PORTS", "/dev/ttyACM3, /tmp/pty=ABCD ,")
    s = UsbSettings()
    assert s.usb_gateway is True
    assert s.port_keys() == {"/dev/ttyACM3": None, "/tmp/pty": "ABCD"}


# -- UF2 -------------------------------------------------------------------------------------


def uf2(blocks: int = 3, family: int = RP2040_FAMILY, flags: int = 0x2000) -> bytes:
    out = b""
    for i in range(blocks):
        head = struct.pack(
            "<8I", 0x0A324655, 0x9E5D5157, flags, 0x10000000 + 256 * i, 256, i, blocks, family
        )
        out += head + bytes(476) + struct.pack("<I", 0x0AB16F30)
    return out


def test_uf2_for_the_rp2040_passes() -> None:
    info = check_uf2(uf2())
    assert (info.blocks, info.payload_bytes, info.start, info.end) == (
        3,
        768,
        0x10000000,
        0x10000300,
    )


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "whole number"),
        (uf2()[:-1], "whole number"),
        (uf2(family=0xE48BFF59), "not the RP2040"),
        (uf2(flags=0), "no family id"),
        (b"\x00" * 512, "magic"),
        (uf2()[:512] + uf2()[:512], "numbered"),
    ],
)
def test_uf2_refused(data: bytes, why: str) -> None:
    with pytest.raises(Uf2Error, match=why):
        check_uf2(data)


def test_uf2_command_copies_to_every_drive_and_waits_for_reboots(tmp_path: Path) -> None:
    """`usb uf2` against directories that behave like BOOTSEL drives (the boot ROM takes
    the file and the drive goes away), plus the refusals that protect them."""
    from tests.usb.conftest import picofleet

    image = tmp_path / "micropython.uf2"
    image.write_bytes(uf2(blocks=4))
    wrong = tmp_path / "rp2350.uf2"
    wrong.write_bytes(uf2(family=0xE48BFF59))
    drives = [tmp_path / "RPI-RP2", tmp_path / "RPI-RP2-1"]
    env = {
        "PICOFLEET_DATA_DIR": str(tmp_path / "data"),
        "PICOFLEET_USB_BOOTSEL_DIRS": ",".join(map(str, drives)),
        "PICOFLEET_LOG_FORMAT": "json",
    }
    info = "UF2 Bootloader v3.0\nModel: Raspberry Pi RP2\nBoard-ID: RPI-RP2\n"
    none = picofleet("usb", "uf2", str(image), env=env)
    assert none.returncode == 1 and "no RP2040 BOOTSEL drive" in none.stderr

    stop = threading.Event()

    def boot_rom(drive: Path) -> None:
        # Plugged in with BOOTSEL held after a moment; reboots once a UF2 arrives.
        time.sleep(0.5)
        drive.mkdir()
        (drive / "INFO_UF2.TXT").write_text(info)
        while not stop.is_set():
            if any(drive.glob("*.uf2")):
                time.sleep(0.1)
                shutil.rmtree(drive)
                return
            time.sleep(0.05)

    threads = [threading.Thread(target=boot_rom, args=(d,)) for d in drives]
    for t in threads:
        t.start()
    try:
        while not all((d / "INFO_UF2.TXT").exists() for d in drives):
            time.sleep(0.05)
        listed = picofleet("usb", "list", "--json", "--no-probe", env=env)
        assert listed.returncode == 0, listed.stderr
        boot = [r for r in json.loads(listed.stdout) if r["mode"] == "BOOTSEL"]
        assert sorted(r["mount"] for r in boot) == sorted(map(str, drives))
        assert {r["chip"] for r in boot} == {"RP2040"}
        refused = picofleet("usb", "uf2", str(wrong), env=env)
        assert refused.returncode == 1 and "not the RP2040" in refused.stderr
        assert not any(any(d.glob("*.uf2")) for d in drives)  # nothing was copied
        done = picofleet("usb", "uf2", str(image), "--wait", "--timeout", "20", env=env)
        assert done.returncode == 0, done.stderr
        for d in drives:
            assert f"{d}: copied {4 * 512} bytes; rebooted" in done.stdout
    finally:
        stop.set()
        for t in threads:
            t.join(10)


def test_publisher_bounds_its_queue_while_the_broker_is_away() -> None:
    from picofleet.core.mqttclient import MqttTarget
    from picofleet.usb._publisher import device_session
    from tests.helpers import free_port

    target = MqttTarget("127.0.0.1", free_port())
    pub = device_session(target=target, key=KEY, password="x", queue_max=3)
    pub.start()
    try:
        sent = [pub.queue("picofleet/devices/x/telemetry", b"{}") for _ in range(5)]
    finally:
        pub.close(drain_s=0)
    assert sent == [True, True, True, False, False]
    assert (pub.dropped, pub.unacked) == (2, 3)
