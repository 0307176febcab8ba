"""The USB gateway as a background loop of the hub (``picofleet up``), when switched on.

Off by default: ``picofleet up --usb-gateway``, or ``PICOFLEET_USB_GATEWAY=1`` (environment
or .env), on the Pi whose USB ports the Picos hang off. ``picofleet usb gateway`` runs the
same loop on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from picofleet.core.topics import Topics
from picofleet.usb._gateway import UsbGateway, broker_endpoint
from picofleet.usb._hold import hold_dir
from picofleet.usb._settings import UsbSettings
from picofleet.web.app import HubContext


async def attach(hub: HubContext, stop: asyncio.Event) -> list[Coroutine[Any, Any, None]]:
    usb = hub.area(UsbSettings)
    if not usb.usb_gateway:
        return []
    target = broker_endpoint(hub.settings)
    gateway = UsbGateway(
        host=target.host,
        port=target.port,
        ca=target.ca,
        keys=hub.keys,
        topics=Topics(hub.settings.topic_prefix),
        usb=usb,
        hold_dir=hold_dir(hub.settings),
    )
    hub.extra["usb_gateway"] = gateway
    return [gateway.run(stop)]
