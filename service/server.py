"""The embedded service: `serve()` runs the API with uvicorn, starting a local Ray head
for itself when no cluster is given (what `alto serve` calls)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path

import uvicorn

from service.app import create_app
from service.auth import serve_admin_token
from service.localray import LocalRayHead
from service.settings import Settings

log = logging.getLogger(__name__)


def _url_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def resolve_ray_address(settings: Settings) -> str | None:
    """The job-API URL of the cluster to use: settings, then RAY_ADDRESS; None = start one."""
    address = settings.ray_address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        return None
    if not address.startswith(("http://", "https://")):
        raise ValueError(
            f"ray_address / RAY_ADDRESS must be the Ray dashboard URL that serves the job API "
            f"(e.g. http://127.0.0.1:8265), got {address!r}"
        )
    return address.rstrip("/")


class _Terminated(BaseException):
    """SIGTERM arrived: unwind like KeyboardInterrupt does for SIGINT, so `finally` runs."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated(signum)


def serve(host: str = "127.0.0.1", port: int = 8000, settings: Settings | None = None) -> None:
    """Run the service until interrupted (SIGINT or SIGTERM).

    SQLite in `settings.data_dir` unless a database URL is given; a local Ray head is
    started when neither `settings.ray_address` nor RAY_ADDRESS is set: token auth,
    loopback only, its own temp dir (see `service.localray`). It is stopped on SIGINT
    and SIGTERM alike; after a crash, the next start with the same data directory
    re-attaches to it. Prints the URL and a token to use: ALTO_ADMIN_TOKEN when set,
    else a fresh admin token.
    """
    settings = (settings or Settings()).model_copy()
    if not (0 < port < 65536):
        raise ValueError(f"port must be in 1..65535, got {port}")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.public_url is None:
        settings.public_url = f"http://{_url_host(host)}:{port}"
    # uvicorn handles SIGTERM like SIGINT, then re-raises it with the handler it found
    # installed; with the default one the process would die before the `finally` that
    # stops the Ray head, so SIGTERM raises _Terminated here, as SIGINT raises
    # KeyboardInterrupt (from the start on: the head's start-up is covered too)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    head: LocalRayHead | None = None
    terminated = False
    try:
        address = resolve_ray_address(settings)
        if address is None:
            head = LocalRayHead(
                log_path=Path(settings.data_dir) / "ray-head.log",
                data_dir=settings.data_dir,
                node_env=settings.node_env(),
            )
            print(
                f"starting a local Ray head (log: {head.log_path}) ...", file=sys.stderr, flush=True
            )
            head.start()
            if head.reattached:
                print(f"re-attached to the local Ray head (pid {head.pid})", file=sys.stderr)
            address = head.dashboard_url
            settings.ray_auth_token = head.auth_token
        settings.ray_address = address
        token = serve_admin_token(settings)  # reused across restarts, not minted anew
        app = create_app(settings)
        print(f"ALTO service: {settings.public_url}  (Ray job API: {address})", flush=True)
        print(f"token: {token}", flush=True)
        print(f"  export ALTO_URL={settings.public_url} ALTO_TOKEN={token}", flush=True)
        uvicorn.run(app, host=host, port=port, log_level="warning")
    except _Terminated:
        terminated = True
    finally:
        if main_thread:  # a second SIGTERM must not cut the cleanup short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if head is not None:
                head.stop()
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)
    if terminated:
        # end as SIGTERM asks (exit status 128+15 to whoever waits for us), cleanup done
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    """`python -m service.server [HOST] [PORT]`: serve with settings from ALTO_* variables."""
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 8000
    serve(host, port, Settings())


if __name__ == "__main__":
    main()
