"""Where the hub's optional parts plug in, so the core never imports them by hand.

Each area of the hub (OTA, USB, operator tools, analytics) is a package under ``pi_server``
that may provide any of these modules:

    <pkg>.cli       def register(app: typer.Typer) -> None       CLI commands / groups
    <pkg>.routes    router: fastapi.APIRouter                     HTTP routes
    <pkg>.service   async def attach(hub, stop) -> list[Coroutine]
                    background loops run by the hub's bridge role (hub: HubContext)

A package that does not provide a module is skipped; one that fails to import is an error.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

AREAS = (
    "pi_server.ota",
    "pi_server.usb",
    "pi_server.ops",
    "pi_server.analytics",
    "picofleet.sim",
    "pi_server.release",
    "pi_server.security",
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
