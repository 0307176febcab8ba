"""The OpenAPI page served from the hub itself.

FastAPI's default ``/docs`` loads Swagger UI from a CDN, which a Pi on a LAN without internet
cannot reach (a blank page). The hub serves a vendored Swagger UI 5 (npm ``swagger-ui-dist``;
version 5 because FastAPI writes OpenAPI 3.1, which Swagger UI 4 refuses) from its package.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
# Vendored from swagger-ui-dist; static/swagger-ui/VENDORED.md has the version and hashes.
# A fixed list, so a request can never name any other file.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}
ASSET_DIR = files("picofleet.web") / "static" / "swagger-ui"


def install_docs(app: FastAPI) -> None:
    """Serve ``/docs`` and its assets; the app must be built with ``docs_url=None``."""

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png",
        )

    @app.get(ASSETS_PATH + "/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        media = ASSETS.get(name)
        if media is None:
            raise HTTPException(404, "unknown asset")
        body = (ASSET_DIR / name).read_bytes()
        return Response(body, media_type=media, headers={"Cache-Control": "max-age=86400"})
