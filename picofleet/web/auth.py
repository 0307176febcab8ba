"""The operator token check for mutating HTTP endpoints.

    Authorization: Bearer <FleetKeys.operator_token>

Missing or malformed header -> 401 (with ``WWW-Authenticate: Bearer``); a wrong token -> 403.
The comparison is constant-time. Use it as a route dependency:

    @router.delete("/x", dependencies=[Depends(require_operator)])
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from picofleet.core.credentials import equal

# auto_error=False: we answer 401 ourselves so a missing header and a wrong scheme read alike.
_bearer = HTTPBearer(auto_error=False, description="the operator token: picofleet creds operator")


async def require_operator(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """FastAPI dependency: pass only with the fleet's operator token."""
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "operator token required (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not equal(creds.credentials, request.app.state.hub.keys.operator_token):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "operator token rejected")
