"""The API docs at ``/docs``: Swagger UI served by the node itself, never from a CDN.

FastAPI's default page loads Swagger UI's script from a CDN, unpinned and without integrity checks: on
an air-gapped install (this is self-hosted software) the page was blank, and anywhere else a CDN's
script ran on the API's own origin, where the web UI's user had just typed an API key. The files come
from the ``fastapi-offline`` package instead (its copy of swagger-ui-dist 5; nothing else of it is used),
and only the three the page needs are served. The page
has no inline script (its start-up is ``/docs/assets/init.js``), so it gets a Content-Security-Policy as
strict as the web UI's, but for style attributes, which Swagger UI sets. ReDoc (another CDN script)
and the OAuth2 redirect page (no OAuth2 here: API keys) are not served.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, Response

__all__ = ["DOCS_CSP", "install_docs"]

DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

_STATIC = files("fastapi_offline") / "static"
_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"}

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Stockade API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/assets/favicon.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/init.js"></script>
</body>
</html>
"""

_INIT = """window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  persistAuthorization: false
});
"""


def install_docs(app: FastAPI) -> None:
    """``/docs`` and its assets (create the app with ``docs_url=None, redoc_url=None``)."""

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Any:
        return HTMLResponse(_PAGE)

    @app.get("/docs/assets/init.js", include_in_schema=False)
    async def docs_init() -> Any:
        return Response(_INIT, media_type="text/javascript")

    @app.get("/docs/assets/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> Any:
        media_type = _ASSETS.get(name)
        if media_type is None:
            raise HTTPException(404, "not found")
        return FileResponse(str(_STATIC / name), media_type=media_type,
                            headers={"Cache-Control": "public, max-age=86400"})
