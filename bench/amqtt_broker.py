"""amqtt alone, with picofleet's auth/ACL plugins, in its own process (benchmark ceiling)."""

from __future__ import annotations

import asyncio
import sys

from picofleet.broker.embedded import EmbeddedBroker
from picofleet.broker.policy import Policy
from picofleet.core.credentials import FleetKeys
from picofleet.core.topics import Topics


async def main(port: int, secret: str) -> None:
    async with EmbeddedBroker(
        policy=Policy(Topics(), FleetKeys(secret.encode())), bind="127.0.0.1", port=port
    ):
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
