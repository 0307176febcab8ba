"""Fleet simulators: a fast MQTT load generator, and (firmware.py) the real firmware loop."""
