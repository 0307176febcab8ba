"""ops area of the hub (see picofleet/areas.py for how it plugs in)."""
