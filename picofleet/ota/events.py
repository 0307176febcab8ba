"""Writing decisions down: per device in ``deploy_event`` (source 'hub'), per rollout in
``ota_rollout_event``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import asyncpg

Q_HUB_EVENTS = """
INSERT INTO deploy_event (device_key, version, state, reason, source, detail)
SELECT u.key, $2, $3, $4, 'hub', $5::jsonb FROM unnest($1::text[]) AS u(key)
"""
Q_ROLLOUT_EVENT = """
INSERT INTO ota_rollout_event (rollout_id, event, wave, detail) VALUES ($1, $2, $3, $4::jsonb)
"""


async def hub_events(
    conn: asyncpg.Connection,
    keys: Sequence[str],
    *,
    version: str | None,
    state: str,
    reason: str | None = None,
    rollout_id: int | None = None,
    **detail: Any,
) -> None:
    """One deploy_event row per device for a decision the hub took."""
    if not keys:
        return
    if rollout_id is not None:
        detail["rollout"] = str(rollout_id)
    await conn.execute(Q_HUB_EVENTS, list(keys), version, state, reason, json.dumps(detail))


async def rollout_event(
    conn: asyncpg.Connection, rollout_id: int, event: str, wave: int | None = None, **detail: Any
) -> None:
    await conn.execute(Q_ROLLOUT_EVENT, rollout_id, event, wave, json.dumps(detail, default=str))
