"""The OTA vocabulary shared by the report writer, the announcer and the operator surface.

Device states come from the wire contract (the device reports them); the hub adds its own
verdicts about a device in a rollout (pending, offered, timed_out, skipped).
"""

from __future__ import annotations

import re

# Shared with the dashboard, so they live below both.
from picofleet.core.rollout import ACTIVE_ROLLOUT_STATES as ACTIVE_ROLLOUT_STATES
from picofleet.core.rollout import FLEET_KINDS as FLEET_KINDS

# Reported by devices on {prefix}/devices/{key}/ota/status.
REPORTED_STATES = frozenset(
    {"received", "downloading", "verified", "applied", "booted_ok", "failed", "rolled_back"}
)
# Failure reason codes of the wire contract; anything else is stored as "unknown".
REASONS = frozenset(
    {
        "sig_invalid",
        "hash_mismatch",
        "no_space",
        "download_error",
        "boot_loop",
        "timeout",
        "bad_meta",
        "key_unknown",
    }
)
UNKNOWN_REASON = "unknown"

# A rollout member that is on its way (meta out, no result yet).
IN_PROGRESS = ("offered", "received", "downloading", "verified", "applied")
BAD = ("failed", "rolled_back", "timed_out")
FINISHED = ("booted_ok", *BAD)

CHANNELS = ("canary", "stable")
DEFAULT_CHANNEL = "stable"

HALTED_CODE = "ota_rollout_halted"  # published on {prefix}/ingest/errors

SEMVER_RE = re.compile(r"^(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})$")
DEVICE_TYPE_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
