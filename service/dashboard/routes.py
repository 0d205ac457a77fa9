"""HTTP routes of the dashboard: its six pages, their static assets and the charting
library.

Pages carry no data and need no token: the script fetches everything from the
/v1 API with the token the user supplies (in the URL fragment `#token=...`,
which browsers never send to the server, or typed into the page), so the
dashboard enforces exactly the API's permissions and adds no second auth path.
"""

from __future__ import annotations

import gzip
import re
from functools import lru_cache
from importlib import metadata
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

STATIC_DIR = Path(__file__).parent / "static"
ASSETS = {"app.js": "text/javascript", "app.css": "text/css", "favicon.svg": "image/svg+xml"}
_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
# plotly.js as plotly's Python package ships it (package_data/plotly.min.js, about 4.8 MB,
# 1.5 MB gzipped): the URL names the package's version, so a year's caching is safe
PLOTLY_PACKAGE = "plotly"
IMMUTABLE = "public, max-age=31536000, immutable"

router = APIRouter(include_in_schema=False)


@lru_cache(maxsize=8)
def _read(name: str) -> bytes:
    return (STATIC_DIR / name).read_bytes()


@lru_cache(maxsize=1)
def plotly_path() -> str:
    """Where the page loads plotly.js from; "" when the package is not installed (the
    dashboard then shows its tables and says the charts are unavailable)."""
    try:
        version = metadata.version(PLOTLY_PACKAGE)
    except metadata.PackageNotFoundError:
        return ""
    return f"/dashboard/vendor/plotly-{version}.min.js"


@lru_cache(maxsize=2)
def _plotly(compressed: bool) -> bytes:
    raw = files(PLOTLY_PACKAGE).joinpath("package_data", "plotly.min.js").read_bytes()
    return gzip.compress(raw, compresslevel=6, mtime=0) if compressed else raw


def _page(kind: str, object_id: str = "") -> HTMLResponse:
    """The one HTML shell; the script picks the page from `data-page`/`data-id`."""
    if object_id and not _ID.match(object_id):
        raise HTTPException(status_code=404, detail=f"no such {kind}: {object_id!r}")
    html = _read("index.html").decode("utf-8")
    html = html.replace("{{page}}", kind).replace("{{id}}", object_id)
    html = html.replace("{{plotly}}", plotly_path())
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


@router.get("/", response_class=HTMLResponse)
def jobs_page() -> HTMLResponse:
    """The jobs table (live status)."""
    return _page("jobs")


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job_id: str) -> HTMLResponse:
    """One job: live training/validation loss, throughput and memory."""
    return _page("job", job_id)


@router.get("/comparisons", response_class=HTMLResponse)
def comparisons_page() -> HTMLResponse:
    """The comparisons table (live status)."""
    return _page("comparisons")


@router.get("/comparisons/{comparison_id}", response_class=HTMLResponse)
def comparison_page(comparison_id: str) -> HTMLResponse:
    """A comparison: arms' curves (mean and spread over seeds), table, memory bars."""
    return _page("comparison", comparison_id)


@router.get("/studies", response_class=HTMLResponse)
def studies_page() -> HTMLResponse:
    """The studies table (live phase and status)."""
    return _page("studies")


@router.get("/studies/{study_id}", response_class=HTMLResponse)
def study_page(study_id: str) -> HTMLResponse:
    """A study: phase, plan, per batch size every tuned arm against the tuned baseline
    (CIs, verdicts, steps to target), scaling, findings and the study's plot."""
    return _page("study", study_id)


@router.get("/dashboard/static/{name}")
def asset(name: str) -> Response:
    """The dashboard's own script, stylesheet and icon (nothing else is served)."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(status_code=404, detail=f"no such dashboard asset: {name!r}")
    return Response(_read(name), media_type=media_type, headers={"Cache-Control": "no-cache"})


@router.get("/dashboard/vendor/{name}")
def vendor(name: str, request: Request) -> Response:
    """plotly.js from the installed plotly package (never a CDN), gzipped for browsers
    that take it; cached for a year under a URL that names the version."""
    if not plotly_path() or name != plotly_path().rsplit("/", 1)[-1]:
        raise HTTPException(status_code=404, detail=f"no such dashboard asset: {name!r}")
    headers = {"Cache-Control": IMMUTABLE, "Vary": "Accept-Encoding"}
    compressed = "gzip" in request.headers.get("accept-encoding", "").lower()
    if compressed:
        headers["Content-Encoding"] = "gzip"
    return Response(_plotly(compressed), media_type="text/javascript", headers=headers)
