# hw: the relay's hardware backstop, the bounded DNS lookup and the trial deadline, against
# the recording machine stand-in (tests/firmware/mp/stubs/machine.py).
import socket

import hw
import machine


def _board():
    machine.clear()
    return hw.Board({"relay": 15, "relay_active_high": True, "moisture_adc": 26})


def _backstops():
    return [t for t in machine.active_timers() if t.mode == machine.Timer.ONE_SHOT]


def test_backstop_is_armed_with_the_run_and_dropped_with_it():
    b = _board()
    b.relay(True, 5000)
    assert machine.levels[15] == 1
    (t,) = _backstops()
    assert 5500 <= t.period <= 5600
    b.relay(False)
    assert machine.levels[15] == 0 and not _backstops()


def test_extending_a_run_rearms_the_backstop():
    # the second pump command moves the end from 5 s to 25 s: the timer armed for the first
    # one must not drop the relay at 5.5 s while the status says on
    b = _board()
    b.relay(True, 5000)
    b.relay(True, 25000)
    (t,) = _backstops()
    assert 25500 <= t.period <= 25600, t.period
    t.fire()
    assert machine.levels[15] == 0  # and it still drops the relay when it fires


def test_shortening_a_run_rearms_the_backstop():
    b = _board()
    b.relay(True, 30000)
    b.relay(True, 10000)
    (t,) = _backstops()
    assert 10500 <= t.period <= 10600, t.period


def test_the_control_loop_does_not_rearm_every_tick():
    b = _board()
    b.relay(True, 30000)
    n = len(machine.timers)
    for _ in range(5):
        b.relay(True, 30000 - b.ms())  # the same end, seen later
    assert len(machine.timers) == n


def test_core_temperature_and_supply_read_by_name_not_chip_number():
    b = _board()
    machine.adc_values[machine.ADC.CORE_TEMP] = 14000  # about 0.705 V: 27 C
    assert 25 < b.temperature_c() < 29
    assert b.supply_v() > 0


def test_literal_address_skips_dns():
    b = _board()
    calls = []
    socket.getaddrinfo = lambda *a: calls.append(a)
    assert b.resolve("192.168.4.1", 1883) == ("192.168.4.1", 1883)
    assert calls == []


def test_dns_lookup_holds_the_watchdog_for_a_bounded_time():
    b = _board()
    b.watchdog()
    seen = []

    def slow_lookup(host, port, *a):
        # lwIP is waiting: only the hold timer can feed the watchdog now
        (t,) = [t for t in machine.active_timers() if t.mode == machine.Timer.PERIODIC]
        n = len(machine.log)
        t.fire()
        seen.append(machine.log[n:])
        return [(2, 1, 0, "", ("10.1.2.3", port))]

    socket.getaddrinfo = slow_lookup
    assert b.resolve("hub.local", 1883) == ("10.1.2.3", 1883)
    assert seen == [[("feed",)]]
    assert not machine.active_timers()  # released after the call

    def hung_lookup(host, port, *a):
        (t,) = machine.active_timers()
        n = len(machine.log)
        t.fire()  # past the limit: no more feeding, the watchdog will reset the board
        seen.append(machine.log[n:])
        raise OSError(-2)

    socket.getaddrinfo = hung_lookup
    try:
        b.resolve("hub.local", 1883, limit_ms=0)
        raise AssertionError("no error")
    except OSError:
        pass
    assert seen[-1] == [] and not machine.active_timers()


def test_trial_deadline_resets_unless_passed():
    machine.clear()
    hw.arm_trial()
    (t,) = machine.active_timers()
    assert t.period == hw.TRIAL_MS and t.mode == machine.Timer.ONE_SHOT
    try:
        t.fire()
        raise AssertionError("no reset")
    except machine.Reset:
        pass
    hw.arm_trial()
    hw.trial_passed()
    assert not machine.active_timers()
