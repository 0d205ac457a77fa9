"""The dashboard's pages and assets as served by the app (no browser needed)."""

from __future__ import annotations

import re

import httpx
import pytest
from livesvc import LiveService

pytestmark = pytest.mark.timeout(60)


def test_pages_are_served_without_a_token(svc: LiveService) -> None:
    for path, page in (
        ("/", "jobs"),
        ("/jobs/abc123", "job"),
        ("/comparisons", "comparisons"),
        ("/comparisons/c-1", "comparison"),
        ("/studies", "studies"),
        ("/studies/s-1", "study"),
    ):
        r = httpx.get(svc.url + path)
        assert r.status_code == 200, path
        assert r.headers["content-type"].startswith("text/html")
        assert f'data-page="{page}"' in r.text
    assert 'data-id="abc123"' in httpx.get(svc.url + "/jobs/abc123").text


def test_ids_that_cannot_be_ids_are_404(svc: LiveService) -> None:
    assert httpx.get(svc.url + "/jobs/" + "x" * 100).status_code == 404
    assert httpx.get(svc.url + "/comparisons/a%22b").status_code == 404
    assert httpx.get(svc.url + "/studies/a%3Cb").status_code == 404


def test_assets_are_ours_and_nothing_is_loaded_from_elsewhere(svc: LiveService) -> None:
    html = httpx.get(svc.url + "/").text
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs and all(ref.startswith("/") for ref in refs), refs
    for name, kind in (("app.js", "javascript"), ("app.css", "css"), ("favicon.svg", "svg")):
        r = httpx.get(f"{svc.url}/dashboard/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
    script = httpx.get(svc.url + "/dashboard/static/app.js").text
    assert not re.search(r"https?://", script)  # no CDN, no remote fetch
    assert httpx.get(svc.url + "/dashboard/static/../app.py").status_code == 404
    assert httpx.get(svc.url + "/dashboard/static/secrets.txt").status_code == 404


def test_dashboard_routes_are_not_in_the_api_schema(svc: LiveService) -> None:
    paths = httpx.get(svc.url + "/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/dashboard") for p in paths)


def test_plotly_is_served_from_the_installed_package(svc: LiveService) -> None:
    """plotly.js comes from plotly's Python package, under a URL that names its version
    (so it may be cached for a year), gzipped for clients that take it."""
    from importlib import metadata
    from importlib.resources import files

    html = httpx.get(svc.url + "/comparisons/c-1").text
    (path,) = re.findall(r'data-plotly="([^"]*)"', html)
    assert path == f"/dashboard/vendor/plotly-{metadata.version('plotly')}.min.js"
    shipped = files("plotly").joinpath("package_data", "plotly.min.js").read_bytes()
    r = httpx.get(svc.url + path)  # httpx asks for gzip and decodes it
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    assert r.headers["content-encoding"] == "gzip"
    assert r.content == shipped and r.content.startswith(b"/**\n* plotly.js v")
    assert (
        "immutable" in r.headers["cache-control"]
        and "max-age=31536000" in r.headers["cache-control"]
    )
    assert "accept-encoding" in r.headers["vary"].lower()
    assert "script-src 'self'" in r.headers["content-security-policy"]
    plain = httpx.get(svc.url + path, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.content == shipped
    for other in ("plotly-0.0.1.min.js", "plotly.min.js", "..%2Fapp.js", "widgetbundle.js"):
        assert httpx.get(f"{svc.url}/dashboard/vendor/{other}").status_code == 404, other
