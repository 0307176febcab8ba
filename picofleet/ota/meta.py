"""The retained meta each OTA topic should hold, as rows the announcer publishes.

Writers (operator commands, the announcer) only change rows; a change bumps ``rev`` and the
announcer publishes every row whose ``rev`` is ahead of what it last published. Writing the
same payload again is a no-op, so nothing is republished for nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

Q_SET_DEVICE_META = """
INSERT INTO ota_meta (device_type, device_key, payload, rollout_id)
SELECT $1, u.key, $3, $4 FROM unnest($2::text[]) AS u(key)
ON CONFLICT (device_key) WHERE device_key IS NOT NULL DO UPDATE
SET payload = EXCLUDED.payload, rollout_id = EXCLUDED.rollout_id,
    device_type = EXCLUDED.device_type, rev = nextval('ota_meta_rev_seq'), updated_at = now()
WHERE ota_meta.payload IS DISTINCT FROM EXCLUDED.payload
   OR ota_meta.rollout_id IS DISTINCT FROM EXCLUDED.rollout_id
"""
Q_SET_CHANNEL_META = """
INSERT INTO ota_meta (device_type, channel, payload, rollout_id) VALUES ($1, $2, $3, $4)
ON CONFLICT (device_type, channel) WHERE channel IS NOT NULL DO UPDATE
SET payload = EXCLUDED.payload, rollout_id = EXCLUDED.rollout_id,
    rev = nextval('ota_meta_rev_seq'), updated_at = now()
WHERE ota_meta.payload IS DISTINCT FROM EXCLUDED.payload
   OR ota_meta.rollout_id IS DISTINCT FROM EXCLUDED.rollout_id
"""
# Clear only what a given rollout put there: a newer rollout's or a pin's meta stays.
Q_CLEAR_ROLLOUT_DEVICE_META = """
UPDATE ota_meta SET payload = '', rollout_id = NULL, rev = nextval('ota_meta_rev_seq'),
       updated_at = now()
WHERE device_key = ANY($1::text[]) AND rollout_id = $2 AND payload <> ''
"""
Q_CLEAR_ROLLOUT_CHANNEL_META = """
UPDATE ota_meta SET payload = '', rollout_id = NULL, rev = nextval('ota_meta_rev_seq'),
       updated_at = now()
WHERE channel IS NOT NULL AND rollout_id = $1 AND payload <> ''
"""
Q_CLEAR_DEVICE_META = """
UPDATE ota_meta SET payload = '', rollout_id = NULL, rev = nextval('ota_meta_rev_seq'),
       updated_at = now()
WHERE device_key = $1 AND payload <> ''
"""


async def set_device_meta(
    conn: asyncpg.Connection,
    device_type: str,
    keys: Sequence[str],
    payload: str,
    rollout_id: int | None,
) -> None:
    if keys:
        await conn.execute(Q_SET_DEVICE_META, device_type, list(keys), payload, rollout_id)


async def set_channel_meta(
    conn: asyncpg.Connection, device_type: str, channel: str, payload: str, rollout_id: int | None
) -> None:
    await conn.execute(Q_SET_CHANNEL_META, device_type, channel, payload, rollout_id)


async def clear_rollout_meta(
    conn: asyncpg.Connection, rollout_id: int, keys: Sequence[str] | None = None
) -> None:
    """Clear the rollout's per-device meta of ``keys`` (and its channel meta when None)."""
    if keys is None:
        await conn.execute(Q_CLEAR_ROLLOUT_CHANNEL_META, rollout_id)
    elif keys:
        await conn.execute(Q_CLEAR_ROLLOUT_DEVICE_META, list(keys), rollout_id)


async def clear_device_meta(conn: asyncpg.Connection, device_key: str) -> None:
    await conn.execute(Q_CLEAR_DEVICE_META, device_key)
