"""USB Picos: list them, flash them with mpremote, copy UF2 images, relay their telemetry.

Public surface (everything else is private to the package):

    Transport, MpremoteTransport      the seam under every board conversation
    TransportError                    a step on one board failed (port, step, message)
    UsbBoard, Mode                    a Pico on the bus; REPL, BOOTSEL or OTHER
    UsbSettings                       PICOFLEET_USB_* knobs
    FlashPlan, FlashResult, flash_all, record
    UsbGateway                        serial lines -> MQTT telemetry
    check_uf2, Uf2Error

Errors::

    Exception
     +-- TransportError      (port, step, message; .busy when another program holds the port)
     +-- ValueError
          +-- ConfigError    the options do not make a usable config.json
          +-- BundleError    the firmware to flash cannot be assembled
          +-- Uf2Error       not a UF2 image for the RP2040
"""

from picofleet.core.devconfig import ConfigError, DeviceConfig, OptionsFile
from picofleet.usb._bundle import AppBundle, BundleError, load_app, load_release
from picofleet.usb._discovery import Mode, UsbBoard
from picofleet.usb._flash import FlashPlan, FlashResult, flash_all, record
from picofleet.usb._gateway import UsbGateway
from picofleet.usb._settings import UsbSettings
from picofleet.usb._transport import MpremoteTransport, Transport, TransportError
from picofleet.usb._uf2 import Uf2Error, check_uf2

__all__ = [
    "AppBundle",
    "BundleError",
    "ConfigError",
    "DeviceConfig",
    "FlashPlan",
    "FlashResult",
    "Mode",
    "MpremoteTransport",
    "OptionsFile",
    "Transport",
    "TransportError",
    "Uf2Error",
    "UsbBoard",
    "UsbGateway",
    "UsbSettings",
    "check_uf2",
    "flash_all",
    "load_app",
    "load_release",
    "record",
]
