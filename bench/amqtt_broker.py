"""amqtt alone, with picofleet's auth/ACL plugins, in its own process (benchmark ceiling).

    python bench/amqtt_broker.py PORT SECRET [TLS_PORT [DATA_DIR]]

With TLS_PORT it also serves MQTT over TLS there, with the hub CA of DATA_DIR (made there if
missing; a temporary dir by default)."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from picofleet.broker.embedded import EmbeddedBroker
from picofleet.broker.policy import Policy
from picofleet.core.credentials import FleetKeys
from picofleet.core.settings import Settings
from picofleet.core.tls import ensure_tls
from picofleet.core.topics import Topics


async def main(port: int, secret: str, tls_port: int | None, data_dir: Path) -> None:
    tls = ensure_tls(Settings(data_dir=data_dir, tls_hosts=["127.0.0.1"])) if tls_port else None
    async with EmbeddedBroker(
        policy=Policy(Topics(), FleetKeys(secret.encode())),
        bind="127.0.0.1",
        port=port,
        tls=tls,
        tls_port=tls_port or 0,
    ):
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    tls_port = int(sys.argv[3]) if len(sys.argv) > 3 else None
    data = Path(sys.argv[4]) if len(sys.argv) > 4 else Path(tempfile.mkdtemp())
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], tls_port, data))
