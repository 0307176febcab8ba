"""Masking credentials inside raw payload text before it is shown to anyone.

The raw ledger keeps every message exactly as received, startup tokens included; views of it
(the error API, the dashboard, feeds) show a copy with credential values replaced.
"""

from __future__ import annotations

import re

MASK = "***"
# JSON keys whose string values are credentials, wherever they appear in a payload.
SECRET_KEYS = (
    "provision_token",
    "provision_key",
    "provision_secret",
    "mqtt_password",
    "password",
    "token",
    "secret",
)
_VALUE = re.compile(
    r'("(?:' + "|".join(re.escape(k) for k in SECRET_KEYS) + r')"\s*:\s*)"(?:[^"\\]|\\.)*"?',
    re.IGNORECASE,
)


def redact_payload(text: str) -> str:
    """``text`` with the string value of every credential key replaced by ``***``."""
    return _VALUE.sub(lambda m: f'{m.group(1)}"{MASK}"', text)
