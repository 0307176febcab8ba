# The USB Pico's two concerns as asyncio tasks: report readings, answer commands.
# No hardware here: `sensors` (hw.Sensors or a stub) and the I/O callables are passed in, so
# this runs in MicroPython tests with stubs. Every wait is a short asyncio sleep, so the
# REPL's Ctrl-C (mpremote sends one before anything else) always lands promptly.
from micropython import const
import asyncio
import proto

_BURST = const(64)


class App:
    def __init__(self, sensors, uid, cfg, write):
        self.sensors = sensors
        self.uid = uid
        self.cfg = cfg
        self.write = write  # write(line): one line of text to the host
        self.seq = 0
        self.errors = 0  # sensor read failures since boot

    def sample(self):
        temp, humi = self.sensors.climate()
        if temp is None:
            self.errors += 1
        raw = self.sensors.moisture_raw()
        moist = None if raw is None else proto.moisture_pct(raw, self.cfg["dry"], self.cfg["wet"])
        line = proto.reading_line(self.uid, self.seq, temp, humi, moist)
        if line is not None:
            self.seq += 1
        return line

    def command(self, line):
        word = line.strip().lower()
        if word == "hello":
            return proto.hello_line(self.uid, self.cfg["dht"])
        if word == "read":
            return self.sample() or '{"error":"no readings"}'
        return '{"error":"unknown command"}'

    async def report(self):
        while True:
            line = self.sample()
            if line is not None:
                self.write(line)
            await asyncio.sleep(self.cfg["interval_s"])

    async def listen(self, ready, read1, idle_s=0.02):
        # ready(): True when a character waits (select.poll, timeout 0); read1(): one char.
        # At most _BURST characters per turn, so a flood of input cannot starve report().
        buf = proto.LineBuffer()
        while True:
            n = 0
            while n < _BURST and ready():
                n += 1
                line = buf.feed(read1())
                if line is not None:
                    self.write(self.command(line))
            await asyncio.sleep(0 if n else idle_s)
