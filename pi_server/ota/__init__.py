"""ota area of the hub (see picofleet/extensions.py for how it plugs in)."""
