"""Home Assistant MQTT discovery: the fleet's sensors, pumps and commands as Home Assistant
entities, announced on the broker (opt in with ``PICOFLEET_HA_DISCOVERY=true``)."""
