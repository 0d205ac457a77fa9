"""The service's view of a Ray cluster: capacity, and the life cycle of submitted jobs.

`ClusterBackend` is the narrow interface the scheduler needs; `RayJobsBackend` talks to
a Ray head through its job-submission REST API (the dashboard port), so the service
needs no Ray driver connection and survives Ray restarts and its own restarts alike.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterCapacity:
    """Resources of the alive nodes: per node and summed (e.g. {"CPU": 2.0, "GPU": 0.0})."""

    nodes: list[dict[str, float]] = field(default_factory=list)

    @property
    def total(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for node in self.nodes:
            for key, value in node.items():
                out[key] = out.get(key, 0.0) + value
        return out


@dataclass(frozen=True)
class RayJobState:
    """What Ray says about one submitted job."""

    status: str  # PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED
    message: str | None = None


class ClusterError(RuntimeError):
    """The cluster could not be reached or refused a request."""


class ClusterBackend(Protocol):
    """What the scheduler and the API need from a cluster.

    A backend may set ``state_concurrency`` (default 1): how many ``state()`` calls the
    scheduler may make at once. Remote backends set it above 1, so a pass over many
    running jobs costs about one round trip per batch, not one per job.
    """

    def capacity(self) -> ClusterCapacity:
        """Resources of the cluster's alive nodes."""
        ...

    def submit(self, submission_id: str, entrypoint: str, env_vars: dict[str, str]) -> None:
        """Start a job under `submission_id`; a second call with the same id is a no-op."""
        ...

    def state(self, submission_id: str) -> RayJobState | None:
        """The job's state, or None when the cluster has no job with this id."""
        ...

    def stop(self, submission_id: str) -> None:
        """Ask the cluster to stop the job (asynchronous)."""
        ...

    def logs(self, submission_id: str) -> str:
        """The job's driver log so far."""
        ...

    def ping(self) -> bool:
        """True when the cluster answers."""
        ...


def ray_auth_token(explicit: str | None = None) -> str | None:
    """Ray's cluster token: given, from RAY_AUTH_TOKEN, or the file Ray writes on start."""
    if explicit:
        return explicit
    env = os.environ.get("RAY_AUTH_TOKEN")
    if env:
        return env.strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


class RayJobsBackend:
    """A Ray cluster reached through its dashboard's REST API (job submission + state).

    Talks plain HTTP with httpx rather than through `JobSubmissionClient` so every call
    has a timeout and no Ray import happens inside the API process.
    """

    #: job-state GETs the scheduler may have in flight at once (httpx's pool is shared)
    state_concurrency = 8

    def __init__(
        self,
        address: str,
        auth_token: str | None = None,
        timeout_s: float = 10.0,
        submit_timeout_s: float = 120.0,
    ) -> None:
        self.address = address.rstrip("/")
        token = ray_auth_token(auth_token)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.address, headers=headers, timeout=timeout_s)
        self._submit_timeout_s = submit_timeout_s

    def close(self) -> None:
        """Release the HTTP connection pool."""
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ClusterError(f"Ray at {self.address} unreachable: {exc}") from exc

    def ping(self) -> bool:
        try:
            return self._request("GET", "/api/version").status_code == 200
        except ClusterError:
            return False

    def capacity(self) -> ClusterCapacity:
        r = self._request("GET", "/api/v0/nodes", params={"limit": 10000, "detail": "true"})
        if r.status_code != 200:
            raise ClusterError(f"Ray node list failed: HTTP {r.status_code}: {r.text[:200]}")
        body = r.json()
        rows = body.get("data", {}).get("result", {}).get("result", [])
        nodes = [
            {k: float(v) for k, v in (row.get("resources_total") or {}).items()}
            for row in rows
            if row.get("state") == "ALIVE"
        ]
        return ClusterCapacity(nodes=nodes)

    def submit(self, submission_id: str, entrypoint: str, env_vars: dict[str, str]) -> None:
        body = {
            "entrypoint": entrypoint,
            "submission_id": submission_id,
            "runtime_env": {"env_vars": env_vars},
            "metadata": {"alto_submission": submission_id},
        }
        # submission starts a supervisor actor before answering: slow on a busy head
        r = self._request("POST", "/api/jobs/", json=body, timeout=self._submit_timeout_s)
        if r.status_code == 200:
            return
        if self.state(submission_id) is not None:  # a retried submission: already there
            return
        raise ClusterError(f"Ray refused job {submission_id}: HTTP {r.status_code}: {r.text[:500]}")

    def state(self, submission_id: str) -> RayJobState | None:
        r = self._request("GET", f"/api/jobs/{submission_id}")
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise ClusterError(f"Ray job {submission_id}: HTTP {r.status_code}: {r.text[:200]}")
        body = r.json()
        return RayJobState(status=str(body.get("status")), message=body.get("message"))

    def stop(self, submission_id: str) -> None:
        r = self._request("POST", f"/api/jobs/{submission_id}/stop")
        if r.status_code not in (200, 404):
            raise ClusterError(f"Ray stop {submission_id}: HTTP {r.status_code}: {r.text[:200]}")

    def logs(self, submission_id: str) -> str:
        r = self._request("GET", f"/api/jobs/{submission_id}/logs")
        if r.status_code == 404:
            return ""
        if r.status_code != 200:
            raise ClusterError(f"Ray logs {submission_id}: HTTP {r.status_code}: {r.text[:200]}")
        return str(r.json().get("logs", ""))
