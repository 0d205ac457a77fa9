"""The browser dashboard: a jobs table, job pages and comparison pages, served at `/`.

The pages are static shells plus our own small script, which reads the public
/v1 API with the user's bearer token and draws the charts with plotly.js, the copy
that plotly's Python package installs, served by this service: nothing is loaded
from a CDN and no third-party code is vendored in the repository, so the dashboard
works on an offline machine.
"""

from service.dashboard.routes import router

__all__ = ["router"]
