"""Creating jobs: checks against the cluster, idempotency keys, rows and tags."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from alto_client.models import JobStatus
from alto_client.spec import JobSpec

from service.db.tables import ComparisonRow, JobRow, JobTag, StudyRow, utcnow
from service.errors import ApiError
from service.specs import never_fits_reason, resource_request
from service.validation import data_path_problems, spec_problems

if TYPE_CHECKING:  # the state imports the scheduler, which creates jobs through this module
    from service.state import ServiceState

MAX_IDEMPOTENCY_KEY = 200


def check_idempotency_key(key: str | None) -> str | None:
    """An Idempotency-Key must be short printable text (it is stored and indexed)."""
    if key is None:
        return None
    if not (1 <= len(key) <= MAX_IDEMPOTENCY_KEY) or not key.isprintable():
        raise ApiError(
            400,
            f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters, "
            f"got {len(key)} characters",
        )
    return key


def check_spec(state: ServiceState, owner: str, spec: JobSpec, loc: list[str | int]) -> None:
    """What the service adds to the spec's own validation, as one 4xx: storable values,
    data paths inside the owner's data roots, and a size that can travel to Ray."""
    problems = spec_problems(spec, loc) + data_path_problems(
        spec, state.settings.roots_for(owner), loc
    )
    if problems:
        where = ".".join(str(p) for p in problems[0].loc if p != "body")
        raise ApiError(422, f"spec is invalid: {where}: {problems[0].msg}", problems)
    size = len(spec.model_dump_json().encode("utf-8"))
    limit = state.settings.max_spec_bytes
    if size > limit:
        where = ".".join(str(p) for p in loc if p != "body") or "spec"
        raise ApiError(
            413,
            f"{where}: the job spec is {size} bytes as JSON, over the limit of {limit} "
            "bytes (max_spec_bytes); specs travel to the cluster in one environment "
            "variable. Put long lists (data.files) in fewer, larger files.",
        )


def check_fits(state: ServiceState, spec: JobSpec, where: str = "spec") -> None:
    """Reject now a job the cluster can never run (when the cluster's size is known)."""
    capacity = state.capacity.get()
    if capacity is None or not capacity.nodes:
        return
    reason = never_fits_reason(spec, capacity)
    if reason is not None:
        raise ApiError(422, f"{where} can never run on this cluster: {reason}")


def new_job_row(
    spec: JobSpec,
    owner: str,
    idempotency_key: str | None = None,
    comparison: ComparisonRow | None = None,
    arm: str | None = None,
    study: StudyRow | None = None,
) -> JobRow:
    """A PENDING job row for `spec` (not yet added to a session)."""
    now = utcnow()
    data = spec.model_dump(mode="json")
    data["report"] = None  # the service fills it in at launch; never store a caller's token
    row = JobRow(
        id=uuid.uuid4().hex,
        name=spec.name,
        owner=owner,
        status=JobStatus.PENDING.value,
        status_reason="accepted; waiting for the scheduler",
        spec=data,
        resources=resource_request(spec),
        created_at=now,
        updated_at=now,
        cancel_requested=False,
        idempotency_key=idempotency_key,
        arm=arm,
        seed=spec.training.seed if comparison is not None or study is not None else None,
    )
    row.tags = [JobTag(tag=t) for t in dict.fromkeys(spec.tags)]
    if comparison is not None:
        row.comparison = comparison
    if study is not None:
        row.study = study
    return row
