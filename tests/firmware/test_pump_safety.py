"""Pump safety as a state machine: hypothesis writes programs of commands, soil readings,
limit changes, faults and ticks of time; each batch is replayed on the unmodified
pico_w/pump.py in real MicroPython (tests/firmware/mp/pump_replay.py), and CPython checks
the trace step by step: no run outlasts its limit, the pump rests for its cooldown between
runs, refusals carry the contract's codes. (The relay's hardware backstop: case_hw.py.)"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.firmware.conftest import FIRMWARE, run_mpy

REPLAY = Path(__file__).parent / "mp" / "pump_replay.py"
BATCH = 25  # programs per interpreter run

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

# plausible commands and short waits are drawn more often: a run gets extended mid-way
step = st.one_of(
    st.tuples(st.just("time"), st.one_of(st.integers(0, 2000), st.integers(0, 700_000))),
    st.tuples(st.just("time"), st.integers(0, 30_000)),
    st.tuples(st.just("soil"), st.one_of(st.none(), st.floats(0, 100))),
    st.tuples(st.just("cmd"), seconds),
    st.tuples(st.just("cmd"), st.integers(1, 120)),
    st.tuples(st.just("cmd"), st.integers(1, 120)),
    st.tuples(st.just("stop"), st.none()),
    st.tuples(st.just("fault"), st.none()),
    st.tuples(st.just("limits"), limits),
)
program = st.tuples(limits, st.integers(0, 10**9), st.lists(step, min_size=1, max_size=60))


def _json_arg(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return ["nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")]
    return v


def _replay(programs: list[Any], tmp: Path) -> list[list[list[Any]]]:
    doc = [[lim, now, [[op, _json_arg(a)] for op, a in steps]] for lim, now, steps in programs]
    (tmp / "programs.json").write_text(json.dumps(doc))
    out = run_mpy(
        str(REPLAY),
        {"pump.py": FIRMWARE / "pump.py", "programs.json": tmp / "programs.json"},
    )
    traces = [json.loads(line) for line in out.splitlines() if line.startswith("[")]
    assert len(traces) == len(programs)
    return traces


def _check(prog: Any, trace: list[list[Any]]) -> None:
    lim, _, steps = prog
    limits_now = lim
    was_on, started, run_limit, stopped = False, 0, 0, None
    for (op, arg), (now, on, remaining, cooldown, err) in zip(steps, trace, strict=True):
        if op == "limits":
            limits_now = arg
            if on:
                run_limit = min(run_limit, arg["max_run_s"] * 1000)
        if op == "cmd" and err is not None:
            assert err in ("out_of_bounds", "bad_args", "cooldown"), err
        if op in ("stop", "fault"):
            assert not on
        if on and not was_on:
            if stopped is not None:
                rest = now - stopped
                assert rest >= limits_now["cooldown_s"] * 1000, (rest, limits_now)
            started = now
            run_limit = limits_now["max_run_s"] * 1000
        if was_on and not on:
            stopped = now
        was_on = on
        assert remaining >= 0 and cooldown >= 0
        if on:
            assert now - started < run_limit, (now - started, run_limit)
            assert remaining <= run_limit - (now - started)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(program, min_size=BATCH, max_size=BATCH))
def test_pump_safety_in_micropython(tmp_path_factory: Any, programs: list[Any]) -> None:
    traces = _replay(programs, tmp_path_factory.mktemp("pump"))
    for prog, trace in zip(programs, traces, strict=True):
        _check(prog, trace)
