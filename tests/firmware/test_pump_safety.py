"""Pump safety as a state machine: hypothesis drives pico_w/pump.py with any sequence of
commands, soil readings, limit changes, faults and ticks of time, and checks after every step
that no run outlasts its limit and that the pump rests for its cooldown between runs. Then
hw.Board's hardware timer: the relay drops even when the loop that should stop it stalls."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from picofleet.sim.firmware import Interpreter, VirtualBoard, flash
from tests.firmware.conftest import FIRMWARE


@functools.cache
def pump_module() -> Any:
    # pump.py is pure: one copy, loaded the way a board loads it (the flash is the source dir)
    return Interpreter(VirtualBoard("PUMP", FIRMWARE)).load("pump")


limits = st.fixed_dictionaries(
    {
        "max_run_s": st.integers(1, 120),
        "cooldown_s": st.integers(0, 600),
        "auto_below_pct": st.one_of(st.none(), st.integers(0, 100), st.floats(0, 100)),
        "auto_run_s": st.integers(1, 120),
    }
).map(lambda d: {**d, "auto_run_s": min(d["auto_run_s"], d["max_run_s"])})

seconds = st.one_of(
    st.integers(-10, 200),
    st.floats(-1, 200, allow_nan=False),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.booleans(),
    st.text(max_size=3),
)


class PumpMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0
        self.p: Any = None
        self.limits: dict[str, Any] = {}
        self.was_on = False
        self.started = 0
        self.run_limit_ms = 0
        self.stopped: int | None = None

    @initialize(lim=limits, start=st.integers(0, 10**9))
    def setup(self, lim: dict[str, Any], start: int) -> None:
        self.now = start
        self.limits = lim
        self.p = pump_module().Pump(lim)

    def _observe(self) -> None:
        on = self.p.on
        if on and not self.was_on:
            if self.stopped is not None:
                rest = self.now - self.stopped
                assert rest >= self.limits["cooldown_s"] * 1000, (rest, self.limits)
            self.started = self.now
            self.run_limit_ms = self.limits["max_run_s"] * 1000
        if self.was_on and not on:
            self.stopped = self.now
        self.was_on = on

    @rule(dt=st.one_of(st.integers(0, 2000), st.integers(0, 700_000)))
    def time_passes(self, dt: int) -> None:
        self.now += dt
        self.p.tick(self.now)
        self._observe()

    @rule(pct=st.one_of(st.none(), st.floats(0, 100)))
    def soil_reading(self, pct: float | None) -> None:
        self.p.moisture(pct, self.now)
        self._observe()

    @rule(secs=seconds)
    def pump_command(self, secs: Any) -> None:
        try:
            self.p.start(secs, self.now)
        except pump_module().PumpError as e:
            assert e.args[0] in ("out_of_bounds", "bad_args", "cooldown")
        self._observe()

    @rule()
    def stop_command(self) -> None:
        self.p.stop(self.now)
        self._observe()
        assert not self.p.on

    @rule()
    def fault(self) -> None:
        self.p.error(self.now, "relay driver error")
        self._observe()
        assert not self.p.on

    @rule(lim=limits)
    def config_change(self, lim: dict[str, Any]) -> None:
        self.limits = lim
        self.p.set_limits(lim, self.now)
        if self.p.on:
            self.run_limit_ms = min(self.run_limit_ms, lim["max_run_s"] * 1000)
        self._observe()

    @invariant()
    def never_past_the_limit(self) -> None:
        if self.p is not None and self.p.on:
            assert self.now - self.started < self.run_limit_ms
            assert self.p.remaining_ms(self.now) <= self.run_limit_ms - (self.now - self.started)

    @invariant()
    def counters_never_negative(self) -> None:
        if self.p is not None:
            assert self.p.remaining_ms(self.now) >= 0 and self.p.cooldown_ms(self.now) >= 0


PumpMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestPumpSafety = PumpMachine.TestCase


def test_hardware_timer_drops_the_relay_when_the_loop_stalls(tmp_path: Path) -> None:
    flash(tmp_path, None, source=FIRMWARE)
    board = VirtualBoard("PUMP", tmp_path)
    hw = Interpreter(board).load("hw")
    b = hw.Board({"relay": 15, "relay_active_high": True, "moisture_adc": 26})
    b.relay(True, 200)  # the app asks for 0.2 s ... and then never runs again
    assert board.relay_on and b.relay_is_on()
    deadline = time.monotonic() + 3
    while board.relay_on and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not board.relay_on, "the backstop timer did not drop the relay"
    on, off = board.relay_log[0][0], board.relay_log[1][0]
    assert 0.6 <= off - on < 2.0  # the planned end plus the backstop's margin
