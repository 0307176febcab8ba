"""Device status reports (``{prefix}/devices/{key}/ota/status``) into the deploy log.

An extra writer of the bridge's ledger: it runs inside the batch's transaction, so a report
is acknowledged to the broker only once it is logged.

- every report becomes a ``deploy_event`` row (source 'ota'), except a redelivery of one
  already logged (same device, seq, state and version);
- only a report whose ``seq`` is above the device's last accepted one moves state
  (``ota_device_state`` and its rollout membership); a late one is logged with
  ``"stale": true`` and changes nothing. A USB flash logged after the device's last report
  resets that baseline, since a reflashed board may restart its counter;
- ``ota_device_state.running_version`` moves only on ``booted_ok``: what the device says it
  runs now, which is what a rollout waits for;
- reason codes come from the contract; anything else is stored as ``unknown`` with the
  device's text kept in the event's detail.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from picofleet.bridge.ledger import Stored
from picofleet.core.codes import Code
from picofleet.core.topics import Kind
from picofleet.ota.model import REASONS, REPORTED_STATES, UNKNOWN_REASON

MAX_SEQ = 2**62

Q_BASELINES = """
SELECT s.device_key, s.seq,
       EXISTS (SELECT 1 FROM deploy_event u WHERE u.device_key = s.device_key
               AND u.source = 'usb' AND u.created_at > s.updated_at) AS reflashed
FROM ota_device_state s WHERE s.device_key = ANY($1::text[])
ORDER BY s.device_key FOR UPDATE OF s
"""
Q_LOG = """
INSERT INTO deploy_event (device_key, version, state, reason, source, seq, detail, raw_id)
SELECT u.key, u.version, u.state, u.reason, 'ota', u.seq, u.detail::jsonb, u.raw_id
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[],
            $7::bigint[]) AS u(key, version, state, reason, seq, detail, raw_id)
WHERE NOT EXISTS (
    SELECT 1 FROM deploy_event d
    WHERE d.source = 'ota' AND d.device_key = u.key AND d.seq = u.seq AND d.state = u.state
      AND d.version IS NOT DISTINCT FROM u.version)
"""
# running_version moves only on booted_ok ($7: the version of the device's newest accepted
# booted_ok in the batch, NULL when it has none): the version the device says it now runs.
Q_STATE = """
INSERT INTO ota_device_state AS s (device_key, rollout_id, version, state, reason, seq,
                                   running_version, updated_at)
SELECT u.key, r.id, u.version, u.state, u.reason, u.seq, u.running, now()
FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[],
            $7::text[]) AS u(key, rid, version, state, reason, seq, running)
LEFT JOIN ota_rollout r ON r.id = u.rid
ON CONFLICT (device_key) DO UPDATE
SET rollout_id = EXCLUDED.rollout_id, version = EXCLUDED.version, state = EXCLUDED.state,
    reason = EXCLUDED.reason, seq = EXCLUDED.seq,
    running_version = coalesce(EXCLUDED.running_version, s.running_version), updated_at = now()
"""
# A device reporting on a rollout it is not a member of (a channel rollout it joined
# late) becomes a member of the rollout's current wave.
Q_MEMBER = """
INSERT INTO ota_rollout_device AS rd (rollout_id, device_key, wave, state, reason, seq,
                                      offered_at, started_at, booted_at, updated_at)
SELECT r.id, u.key, r.current_wave, u.state, u.reason, u.seq, now(), now(),
       CASE WHEN u.state = 'booted_ok' THEN now() END, now()
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[])
     AS u(rid, key, state, reason, seq)
JOIN ota_rollout r ON r.id = u.rid
ON CONFLICT (rollout_id, device_key) DO UPDATE
SET state = EXCLUDED.state, reason = EXCLUDED.reason, seq = EXCLUDED.seq,
    offered_at = coalesce(rd.offered_at, EXCLUDED.offered_at),
    started_at = coalesce(rd.started_at, EXCLUDED.started_at),
    booted_at = CASE WHEN EXCLUDED.state = 'booted_ok'
                     THEN coalesce(rd.booted_at, EXCLUDED.booted_at) END,
    healthy_at = CASE WHEN EXCLUDED.state = 'booted_ok' THEN rd.healthy_at END,
    updated_at = now()
WHERE rd.seq IS NULL OR rd.seq < EXCLUDED.seq
"""


@dataclass(slots=True)
class Report:
    device_key: str
    raw_id: int
    state: str
    seq: int
    version: str | None
    reason: str | None
    rollout_id: int | None
    detail: dict[str, Any]


def parse_report(device_key: str, body: dict[str, Any], raw_id: int) -> Report | str:
    """A Report, or why the body is not one (stored as a validation_error)."""
    state = body.get("state")
    if not isinstance(state, str) or state not in REPORTED_STATES:
        return f"state must be one of {', '.join(sorted(REPORTED_STATES))}"
    seq = body.get("seq")
    if type(seq) is not int or not 0 <= seq < MAX_SEQ:
        return "seq must be a non-negative integer"
    version = body.get("version")
    if version is not None and (not isinstance(version, str) or len(version) > 32):
        return "version must be a string of at most 32 characters"
    detail: dict[str, Any] = {}
    raw_reason = body.get("reason")
    reason: str | None
    if isinstance(raw_reason, str) and raw_reason in REASONS:
        reason = raw_reason
    elif raw_reason is None:
        reason = UNKNOWN_REASON if state in ("failed", "rolled_back") else None
    else:
        reason = UNKNOWN_REASON
        detail["reason_text"] = str(raw_reason)[:100]
    rollout = body.get("rollout")
    rollout_id: int | None = None
    if isinstance(rollout, str) and rollout.isdecimal() and len(rollout) <= 18:
        rollout_id = int(rollout)
    elif type(rollout) is int and 0 <= rollout < MAX_SEQ:
        rollout_id = rollout
    if rollout is not None:
        detail["rollout"] = str(rollout)[:40]
    text = body.get("detail")
    if isinstance(text, str) and text:
        detail["detail"] = text[:200]
    ts = body.get("ts")
    if type(ts) in (int, float):
        detail["ts"] = ts
    return Report(device_key, raw_id, state, seq, version, reason, rollout_id, detail)


async def write_reports(conn: asyncpg.Connection, batch: Sequence[Stored]) -> None:
    reports: list[Report] = []
    for w in batch:
        m = w.msg
        if m.kind is not Kind.OTA_STATUS or m.status is None or not m.device_key or w.errors:
            continue
        parsed = parse_report(m.device_key, m.status, w.raw_id)
        if isinstance(parsed, str):
            w.reject(Code.VALIDATION_ERROR, f"ota status: {parsed}")
        else:
            reports.append(parsed)
    if not reports:
        return
    keys = sorted({r.device_key for r in reports})
    baseline = {
        row["device_key"]: -1 if row["reflashed"] else row["seq"]
        for row in await conn.fetch(Q_BASELINES, keys)
    }
    logged: list[Report] = []
    latest: dict[str, Report] = {}
    running: dict[str, str | None] = {}  # newest accepted booted_ok's version per device
    seen: set[tuple[str, int]] = set()
    for r in sorted(reports, key=lambda r: (r.device_key, r.seq)):
        if (r.device_key, r.seq) in seen:
            continue  # the same report twice in one batch
        seen.add((r.device_key, r.seq))
        if r.seq > baseline.get(r.device_key, -1):
            baseline[r.device_key] = r.seq
            latest[r.device_key] = r
            if r.state == "booted_ok":
                running[r.device_key] = r.version
        else:
            r.detail["stale"] = True
        logged.append(r)
    await conn.execute(
        Q_LOG,
        [r.device_key for r in logged],
        [r.version for r in logged],
        [r.state for r in logged],
        [r.reason for r in logged],
        [r.seq for r in logged],
        [json.dumps(r.detail) for r in logged],
        [r.raw_id for r in logged],
    )
    current = [latest[k] for k in sorted(latest)]
    if not current:
        return
    await conn.execute(
        Q_STATE,
        [r.device_key for r in current],
        [r.rollout_id for r in current],
        [r.version for r in current],
        [r.state for r in current],
        [r.reason for r in current],
        [r.seq for r in current],
        [running.get(r.device_key) for r in current],
    )
    members = sorted(
        (r for r in current if r.rollout_id is not None),
        key=lambda r: (r.rollout_id or 0, r.device_key),
    )
    if members:
        await conn.execute(
            Q_MEMBER,
            [r.rollout_id for r in members],
            [r.device_key for r in members],
            [r.state for r in members],
            [r.reason for r in members],
            [r.seq for r in members],
        )
