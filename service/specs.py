"""What the service needs to know about a JobSpec: its resource request and its variants.

Kept in one module so a change in the spec's shape touches one place of the service.
"""

from __future__ import annotations

from typing import Any

from alto_client.spec import JobSpec, ReportSpec

from service.cluster import ClusterCapacity


def resource_request(spec: JobSpec) -> dict[str, float]:
    """Total Ray resources the job's workers ask for (the driver itself takes none)."""
    r = spec.resources
    out = {"CPU": r.workers * r.cpus_per_worker}
    if r.device == "gpu":
        out["GPU"] = float(r.workers)
    return out


def worker_bundle(spec: JobSpec) -> dict[str, float]:
    """Resources one worker needs on one node."""
    r = spec.resources
    out = {"CPU": r.cpus_per_worker}
    if r.device == "gpu":
        out["GPU"] = 1.0
    return out


def fits(request: dict[str, float], free: dict[str, float]) -> bool:
    """True when every requested resource is available in `free`."""
    return all(free.get(k, 0.0) + 1e-9 >= v for k, v in request.items() if v > 0)


def never_fits_reason(spec: JobSpec, capacity: ClusterCapacity) -> str | None:
    """Why the job can never run on this cluster (None when it can, once it is free).

    Checks both the total and that one worker fits on some node, since a Ray Train
    worker cannot span nodes.
    """
    total = capacity.total
    request = resource_request(spec)
    for key, amount in request.items():
        have = total.get(key, 0.0)
        if amount > have + 1e-9:
            return (
                f"resources: the job needs {amount:g} {key} in total "
                f"(resources.workers={spec.resources.workers}, device={spec.resources.device}, "
                f"cpus_per_worker={spec.resources.cpus_per_worker:g}) but the cluster has "
                f"{have:g} {key}"
            )
    bundle = worker_bundle(spec)
    if capacity.nodes and not any(fits(bundle, node) for node in capacity.nodes):
        return f"resources: no node can hold one worker needing {bundle}"
    return None


def variant(spec: JobSpec, optimizer: dict[str, Any], seed: int, name: str) -> JobSpec:
    """The same job with another optimizer section, seed and name, validated again
    (so paper defaults are filled for this batch size and cross-field rules rechecked)."""
    data = spec.model_dump(mode="python")
    data["optimizer"] = optimizer
    data["training"]["seed"] = seed
    data["name"] = name
    data["report"] = None
    return JobSpec.model_validate(data)


SPEC_ENV = "ALTO_JOB_SPEC"
"""The environment variable that carries a job's spec to `python -m engine.run`."""

MAX_SPEC_ENV_BYTES = 100 * 1024
"""Largest spec the service hands to Ray. Linux caps one environment string at 128 KiB
(MAX_ARG_STRLEN: a larger one makes exec fail, so Ray's driver never starts) and Ray's
job API refuses bodies near 1 MiB; stored specs are capped lower (`max_spec_bytes`)."""


class SpecTooLarge(ValueError):
    """A spec whose JSON is too large to travel to the cluster."""


def with_report(spec_data: dict[str, Any], url: str, job_id: str, token: str) -> str:
    """The spec as JSON with its `report` section filled in, for the engine to read."""
    data = dict(spec_data)
    data["report"] = ReportSpec(url=url, job_id=job_id, token=token).model_dump()
    return JobSpec.model_validate(data).model_dump_json()


def launch_env(spec_data: dict[str, Any], url: str, job_id: str, token: str) -> dict[str, str]:
    """The environment that carries a stored spec to the engine. Raises when the spec no
    longer validates, is not valid Unicode or is too large to launch."""
    spec_json = with_report(spec_data, url, job_id, token)
    size = len(spec_json.encode("utf-8"))
    if size > MAX_SPEC_ENV_BYTES:
        raise SpecTooLarge(
            f"the spec is {size} bytes as JSON; at most {MAX_SPEC_ENV_BYTES} bytes can "
            "travel to the cluster"
        )
    return {SPEC_ENV: spec_json}
