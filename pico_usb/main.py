# USB Pico app entry: read config.json, start the reporter, answer commands on stdin.
# stdin is polled without blocking (select.poll, timeout 0) between short sleeps, so a Ctrl-C
# from the host (mpremote, a terminal) interrupts this at once and the REPL stays reachable.
import asyncio
import json
import select
import sys

import app
import hw
import proto


def _config():
    try:
        with open("config.json") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _write(line):
    sys.stdout.write(line)
    sys.stdout.write("\n")


async def main():
    cfg = proto.settings(_config())
    sensors = hw.Sensors(cfg["dht"], cfg["dht_pin"], cfg["adc_pin"])
    a = app.App(sensors, hw.unique_id(), cfg, _write)
    poll = select.poll()
    poll.register(sys.stdin, select.POLLIN)
    asyncio.create_task(a.report())
    await a.listen(lambda: bool(poll.poll(0)), lambda: sys.stdin.read(1))


try:
    asyncio.run(main())
finally:
    asyncio.new_event_loop()  # leave a clean loop for the REPL after Ctrl-C
