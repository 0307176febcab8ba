"""A new fleet rollout takes its devices over: their retained meta says what to run now.

Per-device meta outlives the rollout that wrote it, and the firmware takes a ``rollback``
meta whenever its version differs from the one running. A rollback's meta left retained
therefore undid the next rollout on every reboot (issue 19, finding 3: install, reboot,
roll back, reboot, install, ...). So when a channel or waves rollout is created, before any
of its meta goes out:

- every member's per-device meta is cleared (an empty retained message), except a pin's:
  fleet rollouts skip pinned devices. A waves rollout writes a member's topic again, with
  its own target, when the member's wave comes;
- a channel meta with action ``rollback`` on a channel the rollout reaches becomes an
  ``install`` of the same release, signed now. Devices older than it still get it; devices
  already newer ignore it, so it never pulls a member back from the new rollout's target.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from picofleet.core.settings import Settings
from picofleet.core.signing import Signer
from picofleet.ota import meta
from picofleet.ota.manifest import rollout_manifest, signed_meta

Q_CLEAR_MEMBER_META = """
UPDATE ota_meta m SET payload = '', rollout_id = NULL, rev = nextval('ota_meta_rev_seq'),
       updated_at = now()
WHERE m.device_key = ANY($1::text[]) AND m.payload <> ''
  AND NOT EXISTS (SELECT 1 FROM ota_pin p WHERE p.device_key = m.device_key)
RETURNING m.device_key
"""
Q_CHANNEL_ROLLBACK_META = """
SELECT m.channel, r.id AS rollout_id, rel.version, rel.sha256, rel.size
FROM ota_meta m
JOIN ota_rollout r ON r.id = m.rollout_id
JOIN ota_release rel ON rel.id = r.release_id
WHERE m.device_type = $1 AND m.channel IS NOT NULL AND ($2::text IS NULL OR m.channel = $2)
  AND m.payload <> '' AND r.action = 'rollback'
ORDER BY m.channel
FOR UPDATE OF m
"""


async def take_over(
    conn: asyncpg.Connection,
    *,
    settings: Settings,
    signer: Signer,
    device_type: str,
    channel: str | None,
    members: Sequence[str],
) -> dict[str, list[str]]:
    """``channel`` None: the rollout reaches every channel of the type (waves)."""
    cleared = [r["device_key"] for r in await conn.fetch(Q_CLEAR_MEMBER_META, list(members))]
    rewritten = []
    for row in await conn.fetch(Q_CHANNEL_ROLLBACK_META, device_type, channel):
        manifest = rollout_manifest(
            settings=settings,
            version=row["version"],
            device_type=device_type,
            channel=row["channel"],
            sha256=row["sha256"],
            size=row["size"],
            rollout=row["rollout_id"],
            action="install",
        )
        await meta.set_channel_meta(
            conn, device_type, row["channel"], signed_meta(signer, manifest), row["rollout_id"]
        )
        rewritten.append(row["channel"])
    return {"cleared": sorted(cleared), "channels": rewritten}
