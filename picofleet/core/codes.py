"""Error-ledger codes: every rejected message or item gets exactly one of these.

Codes are part of the contract (stored in ``ingest_error.code``, published on
``{prefix}/ingest/errors``, counted in ``/metrics``): add new ones, never rename.
"""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    INVALID_JSON = "invalid_json"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    TOO_MANY_ITEMS = "too_many_items"
    VALIDATION_ERROR = "validation_error"
    INVALID_TIMESTAMP = "invalid_timestamp"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    OUT_OF_RANGE = "out_of_range"
    INVALID_DEVICE_KEY = "invalid_device_key"
    DEVICE_MISMATCH = "device_mismatch"
    BLOCKED_DEVICE = "blocked_device"
    STARTUP_AUTH_ERROR = "startup_auth_error"
    UNKNOWN_TOPIC = "unknown_topic"
    # The database refused the message's data (not an outage): its raw bytes are kept.
    STORE_REFUSED = "store_refused"
    # The sender may not speak for this device (README, "Who may write for which device").
    SENDER_NOT_AUTHORIZED = "sender_not_authorized"
    # A seq (and reading index) already stored with other content; the first one stands.
    SEQ_CONFLICT = "seq_conflict"
    # An item equal to an earlier item of the same message (no seq to tell them apart).
    DUPLICATE_ITEM = "duplicate_item"


# What POST /ingest reports for a message whose first error has this code.
UNAUTHORIZED_CODES = frozenset(
    {Code.STARTUP_AUTH_ERROR, Code.DEVICE_MISMATCH, Code.BLOCKED_DEVICE, Code.SENDER_NOT_AUTHORIZED}
)
# Codes that explain a dropped copy without making the message itself invalid.
NOTE_CODES = frozenset({Code.DUPLICATE_ITEM})
