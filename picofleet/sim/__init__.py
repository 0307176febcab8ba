"""Fleet simulators: a fast MQTT load generator, and (board/) boards of the real firmware in
MicroPython."""
