# config: loading, validation with defaults, remote updates within bounds, atomic save.
import json

import config

KEY = "A" * 43 + "="
GOOD = {
    "device_key": "E6614103E7452D2F",
    "mqtt_password": "pw",
    "provision_secret": None,
    "provision_key": "ab" * 32,
    "wifi": {"ssid": "fleet", "password": "secret"},
    "broker": {"host": "192.168.1.10", "port": 1883},
    "hub_http": "http://192.168.1.10:8000",
    "prefix": "picofleet",
    "device_type": "pico_w",
    "channel": "stable",
    "ota_pubkey": None,
    "ota_key_id": None,
    "calibration": {"moisture_dry": 52000, "moisture_wet": 21000},
    "pump": {"max_run_s": 30, "cooldown_s": 300, "auto_below_pct": 25, "auto_run_s": 10},
    "telemetry_interval_s": 60,
}


def _copy(d):
    return json.loads(json.dumps(d))


def _error(doc):
    try:
        config.validate(doc)
    except config.ConfigError as e:
        return str(e)
    return None


def test_contract_example_is_valid():
    cfg = config.validate(_copy(GOOD))
    assert cfg["pump"]["max_run_s"] == 30
    assert cfg["pins"]["relay"] == 15


def test_defaults_fill_optional_parts():
    doc = _copy(GOOD)
    for k in ("pump", "calibration", "telemetry_interval_s", "prefix", "channel"):
        del doc[k]
    doc["pump"] = None
    cfg = config.validate(doc)
    assert cfg["pump"]["cooldown_s"] == 300
    assert cfg["prefix"] == "picofleet" and cfg["channel"] == "stable"
    assert cfg["telemetry_interval_s"] == 60


def test_problems_are_named():
    cases = (
        ("device_key", None, "device_key"),
        ("device_key", "a/b", "device_key"),
        ("mqtt_password", None, "mqtt_password"),
        ("wifi", None, "wifi"),
        ("provision_key", "xyz", "provision_key"),
        ("hub_http", "https://x", "hub_http"),
        ("telemetry_interval_s", 0, "telemetry_interval_s"),
        ("telemetry_interval_s", "60", "telemetry_interval_s"),
        ("prefix", "a/b", "prefix"),
        ("ota_pubkey", KEY, "ota_key_id"),
        ("extra_key", 1, "extra_key"),
    )
    for key, value, word in cases:
        doc = _copy(GOOD)
        doc[key] = value
        err = _error(doc)
        assert err is not None and word in err, (key, err)
    doc = _copy(GOOD)
    doc["pump"]["max_run_s"] = 5000
    assert "pump.max_run_s" in _error(doc)
    doc = _copy(GOOD)
    doc["pump"]["auto_run_s"] = 40
    assert "auto_run_s" in _error(doc)
    doc = _copy(GOOD)
    doc["broker"]["port"] = 70000
    assert "broker.port" in _error(doc)
    assert "object" in _error([1, 2])


def test_load_missing_and_broken_file():
    try:
        config.load("nope.json")
        raise AssertionError("no error")
    except config.ConfigError as e:
        assert "missing" in str(e)
    with open("broken.json", "w") as f:
        f.write("{not json")
    try:
        config.load("broken.json")
        raise AssertionError("no error")
    except config.ConfigError as e:
        assert "JSON" in str(e)


def test_save_then_load_roundtrip():
    cfg = config.validate(_copy(GOOD))
    config.save(cfg, "cfg.json")
    assert config.load("cfg.json") == cfg


def test_remote_update_within_bounds():
    cfg = config.validate(_copy(GOOD))
    new = config.update(cfg, {"pump": {"max_run_s": 20}, "telemetry_interval_s": 30})
    assert new["pump"]["max_run_s"] == 20 and new["telemetry_interval_s"] == 30
    assert cfg["pump"]["max_run_s"] == 30  # the old config is left alone
    refused = (
        {"pump": {"max_run_s": 0}},
        {"pump": {"max_run_s": 5}},  # below auto_run_s
        {"broker": {"host": "evil"}},
        {"wifi": {"ssid": "x"}},
        {"pump": {"bogus": 1}},
        {"mqtt_password": "x"},
        {},
        None,
    )
    for change in refused:
        try:
            config.update(cfg, change)
            raise AssertionError("accepted %r" % (change,))
        except config.ConfigError:
            pass


def test_ota_trial_s_is_optional_and_bounded():
    assert config.validate(_copy(GOOD))["ota_trial_s"] is None
    doc = _copy(GOOD)
    doc["ota_trial_s"] = 45
    assert config.validate(doc)["ota_trial_s"] == 45
    for bad in (5, 7200, "60", True):
        doc["ota_trial_s"] = bad
        assert _error(doc), bad


def test_device_type_of_a_pico_2_w():
    doc = _copy(GOOD)
    doc["device_type"] = "pico2_w"
    assert config.validate(doc)["device_type"] == "pico2_w"
    # no device_type in config.json: the board's own machine string decides
    assert config.board_type("Raspberry Pi Pico 2 W with RP2350") == "pico2_w"
    assert config.board_type("Raspberry Pi Pico W with RP2040") == "pico_w"
    del doc["device_type"]
    assert config.validate(doc)["device_type"] == "pico_w"  # this interpreter is no RP2350


CA_PEM = """-----BEGIN CERTIFICATE-----
MIIBSjCB8qADAgECAhQz3obZVBPOCWkDHTOz6YeSuXYfzzAKBggqhkjOPQQDAjAS
MRAwDgYDVQQDDAdjYXNlIENBMB4XDTI2MTIwNTAzMjg1MFoXDTI3MTIwNjAzMjg1
MFowEjEQMA4GA1UEAwwHY2FzZSBDQTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IA
BDSwheJ/+iTd/uHtqZKwpE7Y3MB9Y/eML8PlTZLiH0esGTBdzCvVw4v222T8Xfnc
ONETfkOvE8VlyazsK6EHiAWjJjAkMBIGA1UdEwEB/wQIMAYBAf8CAQAwDgYDVR0P
AQH/BAQDAgGGMAoGCCqGSM49BAMCA0cAMEQCIAeDeOsYxZ6MDmlJVltHtpW2+eCY
0nDo6PW8pt1Zh0sCAiA5bDYjVpxdIu/Hs/pAX1rDvKbLGZ0o/hUAoykh2BiC1A==
-----END CERTIFICATE-----
"""


def test_ca_pem_is_optional_and_becomes_der():
    cfg = config.validate(_copy(GOOD))
    assert cfg["ca_pem"] is None and config.ca_der(cfg) is None  # plain MQTT
    doc = _copy(GOOD)
    doc["ca_pem"] = CA_PEM
    cfg = config.validate(doc)
    der = config.ca_der(cfg)
    assert len(der) == 1 and len(der[0]) == 334 and der[0][0] == 0x30
    doc["ca_pem"] = CA_PEM + CA_PEM.replace("\n", "\r\n")  # two, CRLF too: both kept
    assert [len(d) for d in config.ca_der(config.validate(doc))] == [334, 334]


def test_a_bad_ca_pem_is_named():
    doc = _copy(GOOD)
    for bad in ("", 42, "MIIBSjCB8qADAgECAhQz3obZ"):
        doc["ca_pem"] = bad
        assert "ca_pem" in _error(doc), bad
    for bad in (
        "-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n",
        "-----BEGIN CERTIFICATE-----\nMIIBSjCB8qADAgECAhQz\n",  # cut off
    ):
        doc["ca_pem"] = bad
        cfg = config.validate(doc)
        try:
            config.ca_der(cfg)
            raise AssertionError("accepted: " + bad)
        except config.ConfigError as e:
            assert "ca_pem" in str(e)
