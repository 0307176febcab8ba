"""A blocking client of the hub's JSON API for operator commands (no dependency beyond stdlib).

Every call answers ``(status, body)``: the decoded JSON, or the text of a body that is not
JSON; an unreachable hub raises ``OSError`` (``urllib.error.URLError``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from picofleet.core.tls import client_context


class HubApi:
    """``ca``: the hub's CA certificate, which an ``https://`` hub must chain to."""

    def __init__(
        self,
        base: str,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        ca: Path | None = None,
    ) -> None:
        self.base, self.token, self.timeout = base.rstrip("/"), token, timeout
        self._context = None if ca is None else client_context(ca)

    def call(
        self, method: str, path: str, body: Any = None, *, auth: bool = False, timeout: float = 0
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if auth and self.token is not None:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(
                req, timeout=timeout or self.timeout, context=self._context
            ) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw or b"null")
            except ValueError:
                return exc.code, raw.decode("utf-8", "replace")
