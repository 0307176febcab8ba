"""Errors of the OTA area; the CLI prints them, the HTTP API maps them to status codes.

OtaError
 ├── NotFound        unknown release, rollout, device or pin          (HTTP 404)
 ├── Conflict        duplicate version, a rollout already active,
 │                   an operation the rollout's state does not allow  (HTTP 409)
 ├── Invalid         bad version, empty/oversize/non-compiling file   (HTTP 422)
 └── NoSigningKey    no signing key yet, or one with unsafe permissions (HTTP 409)
"""

from __future__ import annotations


class OtaError(Exception):
    """Something an operator can act on; the message says what."""

    status_code = 400


class NotFound(OtaError):
    status_code = 404


class Conflict(OtaError):
    status_code = 409


class Invalid(OtaError):
    status_code = 422


class NoSigningKey(OtaError):
    status_code = 409
