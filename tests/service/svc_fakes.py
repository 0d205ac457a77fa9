"""An in-process stand-in for a Ray cluster, so API tests control job life cycles.

It implements the same `ClusterBackend` interface the Ray backend does; the Ray path
itself is exercised by the end-to-end tests against a real local Ray.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from service.cluster import ClusterCapacity, ClusterError, RayJobState


@dataclass
class FakeJob:
    entrypoint: str
    env: dict[str, str]
    status: str = "PENDING"
    message: str | None = None
    logs: str = ""

    @property
    def spec(self) -> dict:
        return json.loads(self.env["ALTO_JOB_SPEC"])


@dataclass
class FakeCluster:
    """Nodes with fixed resources; jobs move only when a test says so."""

    nodes: list[dict[str, float]] = field(default_factory=lambda: [{"CPU": 4.0}])
    jobs: dict[str, FakeJob] = field(default_factory=dict)
    reachable: bool = True
    submissions: int = 0
    stops: list[str] = field(default_factory=list)
    # run once before the named call ("capacity", "submit", "state"), to interleave an
    # API request at an exact point of a scheduler pass; each gets the call's job id
    before: dict[str, Callable[[str], None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def _before(self, call: str, submission_id: str = "") -> None:
        hook = self.before.pop(call, None)
        if hook is not None:
            hook(submission_id)

    def _check(self) -> None:
        if not self.reachable:
            raise ClusterError("fake cluster unreachable")

    def capacity(self) -> ClusterCapacity:
        self._before("capacity")
        self._check()
        return ClusterCapacity(nodes=[dict(n) for n in self.nodes])

    def submit(self, submission_id: str, entrypoint: str, env_vars: dict[str, str]) -> None:
        self._before("submit", submission_id)
        self._check()
        with self._lock:
            self.submissions += 1
            if submission_id not in self.jobs:
                self.jobs[submission_id] = FakeJob(entrypoint, dict(env_vars))

    def state(self, submission_id: str) -> RayJobState | None:
        self._before("state", submission_id)
        self._check()
        job = self.jobs.get(submission_id)
        return None if job is None else RayJobState(job.status, job.message)

    def stop(self, submission_id: str) -> None:
        self._check()
        self.stops.append(submission_id)
        job = self.jobs.get(submission_id)
        if job is not None and job.status in ("PENDING", "RUNNING"):
            job.status = "STOPPED"
            job.message = "Job was intentionally stopped."

    def logs(self, submission_id: str) -> str:
        self._check()
        job = self.jobs.get(submission_id)
        return "" if job is None else job.logs

    def ping(self) -> bool:
        return self.reachable

    # test helpers
    def set(self, submission_id: str, status: str, message: str | None = None) -> None:
        self.jobs[submission_id].status = status
        self.jobs[submission_id].message = message


def tiny_spec(**training: object) -> dict:
    """A small valid spec (the service never runs it in these tests)."""
    return {
        "name": "tiny",
        "tags": ["t1"],
        "model": {"num_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "seq_length": 16},
        "resources": {"workers": 1, "device": "cpu"},
        "training": {
            "steps": 12,
            "global_batch_size": 8,
            "micro_batch_size": 4,
            "eval_interval": 4,
            **training,
        },
        "optimizer": {"name": "adamw"},
    }
