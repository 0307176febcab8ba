# pump: the safety state machine, scenario by scenario (the property test is on CPython).
import pump

LIMITS = {"max_run_s": 30, "cooldown_s": 300, "auto_below_pct": 25, "auto_run_s": 10}


def _code(fn):
    try:
        fn()
    except pump.PumpError as e:
        return e.args[0]
    return None


def test_auto_watering_below_threshold_runs_auto_run_s():
    p = pump.Pump(LIMITS)
    p.moisture(30.0, 0)
    assert not p.on
    p.moisture(20.0, 1000)
    assert p.on and p.reason == "auto"
    p.tick(10999)
    assert p.on
    p.tick(11000)
    assert not p.on
    assert p.take(11000) == (10.0, 1)


def test_command_bounds_are_refused():
    p = pump.Pump(LIMITS)
    assert _code(lambda: p.start(31, 0)) == "out_of_bounds"
    assert _code(lambda: p.start(0, 0)) == "out_of_bounds"
    assert _code(lambda: p.start(-5, 0)) == "out_of_bounds"
    assert _code(lambda: p.start("5", 0)) == "bad_args"
    assert _code(lambda: p.start(True, 0)) == "bad_args"
    assert _code(lambda: p.start(None, 0)) == "bad_args"
    assert not p.on
    p.start(30, 0)
    assert p.on


def test_cooldown_refuses_and_then_allows():
    p = pump.Pump(LIMITS)
    p.start(5, 0)
    p.tick(5000)
    assert not p.on
    assert _code(lambda: p.start(5, 6000)) == "cooldown"
    p.moisture(1.0, 200000)
    assert not p.on  # automatic watering waits for the cooldown too
    p.start(5, 305000)
    assert p.on


def test_extension_never_passes_max_run():
    p = pump.Pump(LIMITS)
    p.start(20, 0)
    p.start(30, 15000)  # would end at 45 s; the run started at 0 may last until 30 s
    p.tick(29999)
    assert p.on
    p.tick(30000)
    assert not p.on


def test_lowering_max_run_shortens_a_run_raising_never_extends():
    p = pump.Pump(LIMITS)
    p.start(30, 0)
    lower = dict(LIMITS)
    lower["max_run_s"] = 10
    p.set_limits(lower, 5000)
    assert p.on
    p.tick(10000)
    assert not p.on
    p2 = pump.Pump(LIMITS)
    p2.start(10, 0)
    higher = dict(LIMITS)
    higher["max_run_s"] = 60
    p2.set_limits(higher, 1000)
    p2.tick(10000)
    assert not p2.on


def test_sensor_fault_stops_and_is_remembered():
    p = pump.Pump(LIMITS)
    p.start(20, 0)
    p.moisture(None, 2000)
    assert not p.on and p.fault


def test_stop_and_error_and_counters():
    p = pump.Pump(LIMITS)
    p.start(10, 0)
    assert p.take(4000) == (4.0, 1)
    p.stop(6000)
    assert not p.on
    assert p.take(7000) == (2.0, 0)
    p.error(8000, "anything")
    assert not p.on and p.fault == "anything"


def test_auto_off_when_threshold_zero_or_null():
    lim = dict(LIMITS)
    lim["auto_below_pct"] = 0
    p = pump.Pump(lim)
    p.moisture(0.0, 0)
    assert not p.on
    lim["auto_below_pct"] = None
    p = pump.Pump(lim)
    p.moisture(0.0, 0)
    assert not p.on
