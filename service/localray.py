"""A local Ray head owned by this process: started for the embedded service and stopped
with it. It runs `ray start --head --block` in its own process group, so stopping it
ends exactly the Ray processes it started and no other Ray on the machine."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from service.cluster import ray_auth_token


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ray_executable() -> str:
    candidate = Path(sys.executable).with_name("ray")
    return str(candidate) if candidate.exists() else "ray"


class LocalRayHead:
    """`with LocalRayHead() as head:` gives `head.dashboard_url` for the job API."""

    def __init__(
        self,
        num_cpus: int | None = None,
        log_path: Path | None = None,
        startup_timeout_s: float = 120.0,
    ) -> None:
        self.num_cpus = num_cpus
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self.dashboard_port = free_port()
        self.gcs_port = free_port()
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = None

    def start(self) -> LocalRayHead:
        """Start the head and wait until its job API answers."""
        cmd = [
            _ray_executable(),
            "start",
            "--head",
            "--block",
            f"--port={self.gcs_port}",
            "--node-ip-address=127.0.0.1",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            "--disable-usage-stats",
        ]
        # every fixed default port may be taken by another Ray on the same machine (the
        # dashboard agent's 52365 above all, without which the job API refuses jobs)
        for flag in (
            "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port",
            "--metrics-export-port",
            "--runtime-env-agent-port",
            "--ray-client-server-port",
            "--node-manager-port",
            "--object-manager-port",
        ):
            cmd.append(f"{flag}={free_port()}")
        if self.num_cpus is not None:
            cmd.append(f"--num-cpus={self.num_cpus}")
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._log = out if self.log_path else None
        env = dict(os.environ)
        env.pop("RAY_ADDRESS", None)
        # jobs run `python -m engine.run`: let `python` be this interpreter (the one with
        # the engine installed) even when its virtualenv is not activated
        bindir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
        self._proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"`ray start` exited with code {self._proc.returncode}"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            token = ray_auth_token()
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            try:
                r = httpx.get(f"{self.dashboard_url}/api/v0/nodes", headers=headers, timeout=5)
                if r.status_code == 200 and r.json().get("data", {}).get("result", {}).get(
                    "result"
                ):
                    return
                last = f"HTTP {r.status_code}"
            except (httpx.HTTPError, ValueError) as exc:
                last = str(exc)
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(
            f"local Ray head did not answer at {self.dashboard_url} within "
            f"{self.startup_timeout_s:.0f} s ({last})"
        )

    def stop(self, grace_s: float = 5.0) -> None:
        """Terminate the head's process group (SIGTERM, then SIGKILL after `grace_s`)."""
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        try:
            pgid = os.getpgid(proc.pid)
        except ProcessLookupError:
            pgid = None
        if pgid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace_s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        proc.wait(10)
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> LocalRayHead:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
