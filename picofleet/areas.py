"""The hub's areas, and where each plugs in. Top floor: only the assembly (picofleet/hub.py)
and the root CLI read this list; no area imports another.

Each area (OTA, USB, operator tools, analytics, the simulator, release, security, Home
Assistant) is a package under ``picofleet`` that may provide any of these modules:

    <pkg>.cli       def register(app: typer.Typer) -> None       CLI commands / groups
    <pkg>.routes    router: fastapi.APIRouter                     HTTP routes
    <pkg>.service   async def attach(hub, stop) -> list[Coroutine]
                    background loops run by the hub's bridge role (hub: HubContext)
    <pkg>.metrics   async def collect(hub) -> list[prometheus_client Metric]
                    families added to the hub's /metrics at every scrape

A package that does not provide a module is skipped; one that fails to import is an error.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

AREAS = (
    "picofleet.ota",
    "picofleet.usb",
    "picofleet.ops",
    "picofleet.analytics",
    "picofleet.sim",
    "picofleet.release",
    "picofleet.security",
    "picofleet.homeassistant",
)


def modules(kind: str) -> list[ModuleType]:
    found = []
    for area in AREAS:
        name = f"{area}.{kind}"
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            spec = None
        if spec is not None:
            found.append(importlib.import_module(name))
    return found
