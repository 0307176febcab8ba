# main.py of a board that exercises pico_w/mqtt.py against a real broker (run by
# tests/firmware/test_mqtt_broker.py through picofleet.sim.board: real TCP, rp2 semantics).
# Parameters in case.json; results as one line "RESULT <json>".
import json
import time

import mqtt
import network

with open("case.json") as f:
    C = json.loads(f.read())

w = network.WLAN(network.STA_IF)
w.active(True)
w.connect(C["ssid"], C["wifi_password"])
for _ in range(100):
    if w.isconnected():
        break
    time.sleep(0.1)

got = []
cfg = {
    "broker": {"host": C["host"], "port": C["port"]},
    "device_key": C["key"],
    "mqtt_password": C["password"],
}
KEEPALIVE = 2  # s: a broker drops a client silent for 1.5 x this
s = mqtt.Session(cfg, C["status"], lambda t, m: got.append([t.decode(), m.decode()]), KEEPALIVE, 3)
s.connect(time.ticks_ms())
s.pid = 65531  # three SUBSCRIBEs take 65532..65534; the PUBLISHes 65535, then 1 (never 0)
s.subscribe(C["cmd"])
s.subscribe(C["big"])  # a retained message far larger than the heap of a Pico W
s.subscribe(C["small"])  # a retained message with non-ASCII text
pids = [s.pid]
s.publish(C["status"], C["text"], time.ticks_ms(), retain=True)
pids.append(s.pid)
s.publish(C["status"], C["text"], time.ticks_ms(), retain=True)
pids.append(s.pid)
print("READY")
end = time.ticks_add(time.ticks_ms(), 30000)
while time.ticks_diff(end, time.ticks_ms()) > 0:
    s.poll()
    s.keepalive(time.ticks_ms())
    if any(t == C["cmd"] for t, _ in got):
        break
    time.sleep(0.05)
# idle for 5 keepalive periods: only PINGREQs keep the session (Mosquitto closes a client
# silent for 1.5 periods; seen to fail here with keepalive() a no-op)
end = time.ticks_add(time.ticks_ms(), 5 * KEEPALIVE * 1000)
while time.ticks_diff(end, time.ticks_ms()) > 0:
    s.poll()
    s.keepalive(time.ticks_ms())
    time.sleep(0.05)
s.publish(C["status"], C["text"], time.ticks_ms(), retain=True)
pids.append(s.pid)
print("RESULT " + json.dumps({"got": got, "pids": pids, "dropped": s.dropped}))
s.close()
