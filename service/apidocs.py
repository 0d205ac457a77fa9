"""/docs: Swagger UI served from this service, never from a CDN.

The page is this origin's, where the dashboard keeps its token, so it may run only
script that ships with the service: Swagger UI's bundle from the `fastapi-offline`
package (a well-kept copy of swagger-ui-dist) and a small start-up script of ours;
no inline script, so the strict Content-Security-Policy holds here too.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, Response

ASSETS = {
    "swagger-ui-bundle.js": ("fastapi_offline", "text/javascript"),
    "swagger-ui.css": ("fastapi_offline", "text/css"),
    "docs-init.js": ("service.dashboard", "text/javascript"),
}

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>ALTO service API</title>
<link rel="icon" href="/dashboard/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/docs/static/swagger-ui.css">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{openapi_url}"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/static/docs-init.js"></script>
</body>
</html>
"""


@lru_cache(maxsize=4)
def _asset(name: str) -> bytes:
    package, _ = ASSETS[name]
    return files(package).joinpath("static", name).read_bytes()


def docs_router(openapi_url: str) -> APIRouter:
    """The /docs page and its assets, reading the schema at `openapi_url`."""
    router = APIRouter(include_in_schema=False)

    @router.get("/docs", response_class=HTMLResponse)
    def docs_page() -> HTMLResponse:
        return HTMLResponse(PAGE.format(openapi_url=openapi_url))

    @router.get("/docs/static/{name}")
    def docs_asset(name: str) -> Response:
        if name not in ASSETS:
            raise HTTPException(status_code=404, detail=f"no such file: {name!r}")
        return Response(
            _asset(name),
            media_type=ASSETS[name][1],
            headers={"Cache-Control": "public, max-age=3600"},
        )

    return router
