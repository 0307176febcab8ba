# Replays pump programs (made by hypothesis on CPython, tests/firmware/test_pump_safety.py)
# on pico_w/pump.py in MicroPython and prints one JSON line per program: after each step,
# [now, on, remaining_ms, cooldown_ms, error code or null].
import json

import pump

_SPECIAL = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def _arg(v):
    # floats JSON cannot carry come as ["nan"], ["inf"], ["-inf"]
    if isinstance(v, list):
        return _SPECIAL[v[0]]
    return v


def run(program):
    lim, now, steps = program
    p = pump.Pump(lim)
    out = []
    for op, arg in steps:
        err = None
        if op == "time":
            now += arg
            p.tick(now)
        elif op == "soil":
            p.moisture(arg, now)
        elif op == "cmd":
            try:
                p.start(_arg(arg), now)
            except pump.PumpError as e:
                err = e.args[0]
        elif op == "stop":
            p.stop(now)
        elif op == "fault":
            p.error(now, "relay driver error")
        elif op == "limits":
            p.set_limits(arg, now)
        out.append([now, p.on, p.remaining_ms(now), p.cooldown_ms(now), err])
    return out


with open("programs.json") as f:
    for prog in json.loads(f.read()):
        print(json.dumps(run(prog)))
