"""A stand-in for the service's metrics endpoint: a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeService:
    """Stores points by (step, name) like the service; can be 'down' (503) for a while."""

    def __init__(self, job_id: str = "job-7") -> None:
        self.job_id = job_id
        self.points: dict[tuple[int, str], float] = {}
        self.posts = 0
        self.down = False
        self.auth: list[str] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                service.auth.append(self.headers.get("Authorization", ""))
                if service.down or self.path != f"/v1/jobs/{service.job_id}/metrics":
                    self.send_response(503 if service.down else 404)
                    self.end_headers()
                    return
                service.posts += 1
                for p in json.loads(body)["points"]:
                    service.points[(p["step"], p["name"])] = p["value"]
                self.send_response(202)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
