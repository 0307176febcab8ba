"""Settings of the USB area, read from the same environment as ``picofleet.core.settings``.

``Settings`` is shared and not ours to extend, so the USB knobs live here with the same
``PICOFLEET_`` prefix and ``.env`` file:

    PICOFLEET_USB_GATEWAY=1                run the serial gateway inside `picofleet up`
    PICOFLEET_USB_PORTS=/dev/ttyACM5,/dev/pts/7=E6614103E7452D2F
                                           serial ports to use besides the discovered USB
                                           Picos (ptys, USB-serial adapters); PATH=KEY names
                                           the device key of a board that cannot say it
    PICOFLEET_USB_BOOTSEL_DIRS=/mnt/pico   BOOTSEL drives mounted outside the system's mounts
    PICOFLEET_USB_SCAN_INTERVAL_S=2        how often the gateway looks for (re)plugged ports
    PICOFLEET_USB_STEP_TIMEOUT_S=60        longest a single mpremote step may take
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class UsbSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PICOFLEET_", env_file=".env", extra="ignore")

    usb_gateway: bool = False
    usb_ports: Annotated[list[str], NoDecode] = Field(default_factory=list)
    usb_bootsel_dirs: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    usb_scan_interval_s: float = Field(default=2.0, gt=0, le=60)
    usb_step_timeout_s: float = Field(default=60.0, gt=0)
    usb_queue_max: int = Field(default=1000, gt=0)  # per device, while the broker is away

    _split_lists = field_validator("usb_ports", "usb_bootsel_dirs", mode="before")(_split)

    def port_keys(self) -> dict[str, str | None]:
        """The extra ports, each with the device key given for it (None: ask the board)."""
        out: dict[str, str | None] = {}
        for entry in self.usb_ports:
            path, _, key = entry.partition("=")
            out[path.strip()] = key.strip() or None
        return out
