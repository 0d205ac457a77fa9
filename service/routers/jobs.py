"""/v1/jobs: submit, list, inspect, cancel, logs, metric histories and uploads."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from alto_client.models import (
    ErrorResponse,
    FieldError,
    IngestResult,
    Job,
    JobList,
    JobStatus,
    MetricHistory,
    MetricSeries,
)
from alto_client.spec import JobSpec
from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from fastapi.responses import PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service.auth import INGEST_TOKEN_RULE, Principal
from service.body import CheckedJSONRoute
from service.cluster import ClusterError
from service.db.tables import JobRow
from service.deps import (
    CursorQuery,
    LimitQuery,
    OwnerQuery,
    PrincipalDep,
    SessionDep,
    StateDep,
    bearer,
    listed_owner,
)
from service.downsample import keep_indices
from service.errors import ApiError
from service.guard import INGEST_SEQ_KEY, UNAUTHORIZED_HEADERS
from service.ingest import METRIC_BATCH_REF, ingest_upload
from service.repo import (
    TERMINAL,
    CancelOutcome,
    delete_jobs,
    finite_or_none,
    job_by_id,
    job_by_key,
    job_field,
    jobs_page,
    latest_metrics,
    read_job,
    request_cancel,
    to_wire,
)
from service.rollups import ROLLUP_LEVELS, raw_columns, rolled_columns, series_info
from service.submit import (
    check_fits,
    check_idempotency_key,
    check_spec,
    new_job_row,
)
from service.validation import MAX_STEP, METRIC_NAME_RE

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=CheckedJSONRoute)

JOB_ID = Path(pattern=r"^[A-Za-z0-9_\-]{1,40}$", description="a job id")
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413, 422, 503)
}


def load_job(s: Session, principal: Principal, job_id: str) -> Row[Any]:
    """The job (a row of `JOB_SELECT`), if the caller may see it; another owner's job is
    as absent as a missing one."""
    record = job_by_id(s, job_id)
    if record is None or (not principal.admin and record.owner != principal.owner):
        raise ApiError(404, f"no job with id {job_id!r}")
    return record


@router.post("", status_code=202, response_model=Job, responses=ERRORS)
def submit_job(
    request: Request,
    response: Response,
    spec: Annotated[JobSpec, Body(description="the job spec")],
    principal: PrincipalDep,
    s: SessionDep,
    state: StateDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Job:
    """Validate, store and queue a job. A retried request with the same Idempotency-Key
    returns the job the first one created."""
    key = check_idempotency_key(idempotency_key)
    check_spec(state, principal.owner, spec, ["body"])
    if key is not None:
        existing = job_by_key(s, principal.owner, key)
        if existing is not None:
            return _idempotent_answer(s, existing, spec, response, request)
    check_fits(state, spec)
    row = new_job_row(spec, principal.owner, key)
    s.add(row)
    try:
        s.commit()
    except IntegrityError:  # a concurrent request with the same key won
        s.rollback()
        existing = job_by_key(s, principal.owner, key) if key else None
        if existing is None:
            raise
        return _idempotent_answer(s, existing, spec, response, request)
    if state.scheduler is not None:
        state.scheduler.wake()
    response.headers["Location"] = str(request.url_for("get_job", job_id=row.id))
    return read_job(s, row.seq)


def _idempotent_answer(
    s: Session, row: JobRow, spec: JobSpec, response: Response, request: Request
) -> Job:
    stored = dict(row.spec)
    new = spec.model_dump(mode="json")
    new["report"] = None
    if stored != new:
        raise ApiError(
            409,
            "Idempotency-Key was already used for a different spec "
            f"(job {row.id}); use a new key for a new job",
        )
    response.headers["Location"] = str(request.url_for("get_job", job_id=row.id))
    return read_job(s, row.seq)


@router.get("", response_model=JobList, responses=ERRORS)
def list_jobs(
    principal: PrincipalDep,
    s: SessionDep,
    status: JobStatus | None = None,
    tag: Annotated[str | None, Query(max_length=100, pattern=r"^[^\x00-\x1f]+$")] = None,
    owner: OwnerQuery = None,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> JobList:
    """Jobs, newest first. Users see their own jobs; admins all, or one owner's."""
    visible, owner = listed_owner(principal, owner)
    if not visible:
        return JobList(items=[], next_cursor=None)
    rows, more = jobs_page(
        s,
        owner=owner,
        status=None if status is None else status.value,
        tag=tag,
        limit=limit,
        cursor=None if cursor is None else int(cursor),
    )
    return JobList(
        items=[to_wire(r, latest_metrics(s, r.seq)) for r in rows],
        next_cursor=str(rows[-1].seq) if more and rows else None,
    )


@router.get("/{job_id}", response_model=Job, responses=ERRORS)
def get_job(job_id: Annotated[str, JOB_ID], principal: PrincipalDep, s: SessionDep) -> Job:
    """One job: spec, status and reason, timestamps, Ray job id and latest metrics."""
    row = load_job(s, principal, job_id)
    return to_wire(row, latest_metrics(s, row.seq))


@router.post("/{job_id}/cancel", status_code=202, response_model=Job, responses=ERRORS)
def cancel_job(
    job_id: Annotated[str, JOB_ID], principal: PrincipalDep, s: SessionDep, state: StateDep
) -> Job:
    """Cancel a job: a queued one at once, a running one by stopping its Ray job."""
    record = load_job(s, principal, job_id)
    outcome = request_cancel(s, record.seq)
    s.commit()
    if outcome is CancelOutcome.ENDED:
        ended = job_field(s, record.seq, JobRow.status)
        raise ApiError(409, f"job {job_id} has already ended ({ended}); nothing to cancel")
    if outcome is CancelOutcome.STOPPING and state.backend is not None:
        ray_job_id = job_field(s, record.seq, JobRow.ray_job_id)
        # on failure (or before Ray has the job) the scheduler stops it on its next pass
        with contextlib.suppress(ClusterError):
            state.backend.stop(ray_job_id)
    if state.scheduler is not None:
        state.scheduler.wake()
    return read_job(s, record.seq)


@router.delete("/{job_id}", status_code=204, response_class=Response, responses=ERRORS)
def delete_job(job_id: Annotated[str, JOB_ID], principal: PrincipalDep, s: SessionDep) -> Response:
    """Delete an ended job with its metric history (a running job is cancelled first;
    a comparison's or study's job goes with its comparison or study)."""
    record = load_job(s, principal, job_id)
    if record.status not in TERMINAL:
        raise ApiError(
            409,
            f"job {job_id} is {record.status}; only ended jobs can be deleted "
            f"(cancel it first: POST /v1/jobs/{job_id}/cancel)",
        )
    if record.comparison_id is not None:
        raise ApiError(
            409,
            f"job {job_id} belongs to comparison {record.comparison_id}; delete the "
            f"comparison instead (DELETE /v1/comparisons/{record.comparison_id})",
        )
    if record.study_id is not None:
        raise ApiError(
            409,
            f"job {job_id} belongs to study {record.study_id}; delete the study instead "
            f"(DELETE /v1/studies/{record.study_id})",
        )
    delete_jobs(s, [record.seq])
    return Response(status_code=204)


@router.get(
    "/{job_id}/logs",
    response_class=PlainTextResponse,
    responses={**ERRORS, 200: {"content": {"text/plain": {}}}},
)
def job_logs(
    job_id: Annotated[str, JOB_ID],
    principal: PrincipalDep,
    s: SessionDep,
    state: StateDep,
    tail_bytes: Annotated[int, Query(ge=1, le=50_000_000)] = 1_000_000,
) -> PlainTextResponse:
    """The job's driver log from Ray (its last `tail_bytes` bytes); empty before launch."""
    row = load_job(s, principal, job_id)
    if row.ray_job_id is None or state.backend is None:
        return PlainTextResponse("")
    try:
        text = state.backend.logs(row.ray_job_id)
    except ClusterError as exc:
        raise ApiError(503, f"cannot fetch logs from Ray now: {exc}") from exc
    return PlainTextResponse(text[-tail_bytes:])


@router.get("/{job_id}/metrics", response_model=MetricHistory, responses=ERRORS)
def job_metrics(
    job_id: Annotated[str, JOB_ID],
    principal: PrincipalDep,
    s: SessionDep,
    state: StateDep,
    names: Annotated[
        str | None,
        Query(max_length=4000, description="comma-separated metric names; default all"),
    ] = None,
    since_step: Annotated[
        int | None, Query(ge=-1, le=MAX_STEP, description="only steps after this one")
    ] = None,
    max_points: Annotated[
        int | None, Query(ge=2, le=100_000, description="downsample each series to this")
    ] = None,
) -> MetricHistory:
    """Metric histories; a series longer than max_points is downsampled and says so
    (`downsampled`). When the rollups' finest buckets (16 steps) would give fewer than
    max_points points (and the series has at most `RAW_DOWNSAMPLE_MAX`), it is read and
    decimated (first, last, per-bucket minimum and maximum kept); a longer one comes from
    the ingest-time rollups: one point per bucket of 2**k steps, at
    the bucket's last step, valued the mean of its finite values, with the bucket's
    minimum and maximum in `mins`/`maxs`; k is the finest level that gives at most
    max_points buckets over the series' steps (docs/service.md, "Long runs")."""
    row = load_job(s, principal, job_id)
    limit = max_points or state.settings.max_points_default
    wanted: list[str] | None = None
    if names:
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        bad = [n for n in wanted if not METRIC_NAME_RE.match(n)]
        if bad:
            raise ApiError(
                422,
                f"names: {bad[0]!r} is not a metric name (letters, digits and _.:/- only)",
                [FieldError(loc=["query", "names"], msg=f"not a metric name: {bad[0]!r}")],
            )
    series = []
    for info in series_info(s, row.seq, since_step, wanted):
        if info.n <= max(limit, min(limit << ROLLUP_LEVELS[0], RAW_DOWNSAMPLE_MAX)):
            steps, raw_values, times = raw_columns(s, row.seq, info)
            values = list(map(finite_or_none, raw_values))
            downsampled = info.n > limit
            if downsampled:  # the rollups' finest buckets would leave too few points
                keep = keep_indices(values, limit)
                steps = [steps[i] for i in keep]
                values = [values[i] for i in keep]
                times = [times[i] for i in keep]
            series.append(
                MetricSeries(
                    name=info.name,
                    steps=steps,
                    values=values,
                    times=times,
                    total_points=info.n,
                    downsampled=downsampled,
                )
            )
            continue
        cols = rolled_columns(s, row.seq, info, limit, since_step)
        series.append(
            MetricSeries(
                name=info.name,
                steps=cols.steps,
                values=cols.values,
                times=cols.times,
                total_points=info.n,
                downsampled=True,
                mins=cols.mins,
                maxs=cols.maxs,
            )
        )
    return MetricHistory(
        job_id=row.id, series=series, downsampled=any(x.downsampled for x in series)
    )


RAW_DOWNSAMPLE_MAX = 20_000
"""The most points a history decimates from its raw points (a few ms) rather than read
from the rollups, whose finest buckets (16 steps) would flatten a short series."""


def ingest_job_seq_dep(request: Request, job_id: Annotated[str, JOB_ID]) -> int:
    """The seq of the job whose ingestion token AuthBeforeBody checked before the body
    was read (`service.guard`); a request that did not pass there is refused."""
    seq = request.scope.get("state", {}).get(INGEST_SEQ_KEY)
    if seq is None:
        raise ApiError(
            401,
            f"not a valid ingestion token of job {job_id} ({INGEST_TOKEN_RULE})",
            headers=UNAUTHORIZED_HEADERS,
        )
    return int(seq)


@router.post(
    "/{job_id}/metrics",
    response_model=IngestResult,
    responses=ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": METRIC_BATCH_REF}}},
        }
    },
)
async def ingest_metrics(
    request: Request,
    seq: Annotated[int, Depends(ingest_job_seq_dep)],
    state: StateDep,
    _creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> IngestResult:
    """Metric upload from the engine, with the job's own token (not an API token), valid
    while the job runs. Idempotent by (job, step, name): re-sent points are counted as
    duplicates. The body is parsed, checked and stored in a worker thread, a thousand
    points at a time, so an upload never holds the event loop."""
    raw = await request.body()
    return await run_in_threadpool(ingest_upload, state, seq, raw)
