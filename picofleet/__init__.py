"""picofleet: run a fleet of Raspberry Pi Pico boards from a Raspberry Pi.

Floors, bottom up (README "Layout"; tests/layout/test_floors.py enforces them):
``picofleet.core`` (the shared contract), ``broker`` / ``bridge`` / ``security``, ``web``,
the areas (``ota``, ``usb``, ``ops``, ``analytics``, ``release``, ``sim``), and at the top
``hub`` (the assembly), ``areas`` (their list) and ``cli``. Nothing here runs at import.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
