"""Retained messages the broker replays when the bridge subscribes again.

A broker sends a topic's retained message to every new subscription, flagged retained
(MQTT 3.1.1, 3.3.1.3), and the bridge subscribes on every (re)connect, so each restart
would store the same retained telemetry again. A delivery is a replay, acked and not stored,
when it is flagged retained, is not a device's status (retained by contract and applied
again, harmlessly), and its exact bytes on that topic are already in ``raw_record``. A
retained message never stored (published before the bridge's session existed or while the
broker had lost it; or amqtt's offline queue, which it flags retained) is stored as usual.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from picofleet.core.source import Inbound
from picofleet.core.topics import Kind, Topics

# The device's rows first (its index), then the exact topic and bytes.
Q_STORED = """
SELECT EXISTS (
    SELECT 1 FROM raw_record
    WHERE device_key IS NOT DISTINCT FROM $1 AND topic = $2 AND payload = $3
)
"""
Q_STORED_ANY_DEVICE = "SELECT EXISTS (SELECT 1 FROM raw_record WHERE topic = $1 AND payload = $2)"


async def split_replays(
    pool: asyncpg.Pool, topics: Topics, items: Sequence[Inbound]
) -> tuple[list[Inbound], int]:
    """The items to store, and how many were replays of stored messages."""
    fresh: list[Inbound] = []
    replays = 0
    for item in items:
        if item.retained:
            parsed = topics.parse(item.topic)
            if parsed is None or parsed.kind is not Kind.STATUS:
                if parsed is not None and parsed.device_key is not None:
                    seen = await pool.fetchval(
                        Q_STORED, parsed.device_key, item.topic, item.payload
                    )
                else:
                    seen = await pool.fetchval(Q_STORED_ANY_DEVICE, item.topic, item.payload)
                if seen:
                    replays += 1
                    continue
        fresh.append(item)
    return fresh, replays
