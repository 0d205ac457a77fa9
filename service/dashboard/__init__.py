"""The browser dashboard: a jobs table, job pages and comparison pages, served at `/`.

The pages are static shells plus our own small script, which reads the public
/v1 API with the user's bearer token and draws the charts as SVG in the page:
nothing is loaded from a CDN and no third-party code ships in the repository,
so the dashboard works on an offline machine.
"""

from service.dashboard.routes import router

__all__ = ["router"]
