"""Commands to one device (``picofleet/devices/{key}/cmd``) and their acknowledgements.

The device answers every command with a status message carrying ``{"ack": {"cmd", "id",
"ok", "error", "detail"}}``; the bridge stores it like any message, so the hub waits for the
ack by looking for its id in the ledger, and needs no subscription of its own.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import asyncpg
from pydantic import BaseModel, Field, model_validator

from picofleet.ops import queries

POLL_SECONDS = 0.2


class CommandName(StrEnum):
    PUMP = "pump"
    STOP = "stop"
    REBOOT = "reboot"
    CONFIG = "config"


class CommandRequest(BaseModel):
    """What an operator asks; the device checks its own bounds and says why it refuses."""

    cmd: CommandName
    seconds: int | None = Field(None, ge=1, description="pump: how long to run")
    set: dict[str, Any] | None = Field(None, description="config: the keys to change")

    @model_validator(mode="after")
    def _fits(self) -> CommandRequest:
        if self.cmd is CommandName.PUMP and self.seconds is None:
            raise ValueError("pump needs seconds")
        if self.cmd is CommandName.CONFIG and not self.set:
            raise ValueError("config needs set: {key: value, ...}")
        if self.cmd is not CommandName.PUMP and self.seconds is not None:
            raise ValueError(f"{self.cmd} takes no seconds")
        if self.cmd is not CommandName.CONFIG and self.set is not None:
            raise ValueError(f"{self.cmd} takes no set")
        return self

    def payload(self, cid: str) -> bytes:
        body: dict[str, Any] = {"cmd": self.cmd.value, "id": cid}
        if self.seconds is not None:
            body["seconds"] = self.seconds
        if self.set is not None:
            body["set"] = self.set
        return json.dumps(body, separators=(",", ":")).encode()


class CommandResult(BaseModel):
    id: str
    device_key: str
    cmd: CommandName
    sent_at: datetime
    acked: bool
    ack: dict[str, Any] | None = Field(None, description="the device's ack, when it came")


def new_id() -> str:
    return "op-" + secrets.token_hex(4)


def now() -> datetime:
    return datetime.now(UTC)


async def wait_ack(
    pool: asyncpg.Pool, key: str, topic: str, cid: str, since: datetime, seconds: float
) -> dict[str, Any] | None:
    """The device's ack of command ``cid``, or None when none is stored within ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        async with pool.acquire() as conn:
            ack = await queries.command_ack(conn, key, topic, cid, since)
        if ack is not None or time.monotonic() >= deadline:
            return ack
        await asyncio.sleep(POLL_SECONDS)
