"""The rollout vocabulary that more than one area reads: the OTA area, which drives
rollouts, and the dashboard, which shows their buttons (areas never import each other)."""

from __future__ import annotations

ACTIVE_ROLLOUT_STATES = ("running", "waiting", "paused")
FLEET_KINDS = ("channel", "waves")  # rollouts that advance in waves, can halt, roll back

# Operator actions on one rollout and the states each is accepted in (picofleet.ota.rollouts
# answers 409 Conflict in any other state).
ACTIONS: dict[str, tuple[str, ...]] = {
    "pause": ("running",),
    "resume": ("paused", "waiting"),
    "abort": ACTIVE_ROLLOUT_STATES,
}
