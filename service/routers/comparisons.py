"""/v1/comparisons: one job per (arm, seed), and the per-arm verdict and plot."""

from __future__ import annotations

import hashlib
import uuid
from typing import Annotated, Any

from alto_client.metrics import (
    MEM_PEAK_ALLOCATED_BYTES,
    MEM_PEAK_RSS_BYTES,
    OPTIM_STATE_BYTES,
    TRAIN_LOSS,
    TRAIN_TOKENS_PER_S,
    VAL_LOSS,
)
from alto_client.models import (
    Comparison,
    ComparisonCurves,
    ComparisonInfo,
    ComparisonList,
    ComparisonRequest,
    ErrorResponse,
    FieldError,
    JobStatus,
)
from alto_client.spec import JobSpec
from fastapi import APIRouter, Header, Path, Query, Request, Response
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service.auth import Principal
from service.body import CheckedJSONRoute
from service.compare import RunData, Series, combined_status, summarize
from service.curves import DEFAULT_MAX_POINTS, arm_bands, comparison_curves
from service.db.tables import ComparisonRow
from service.deps import (
    CursorQuery,
    LimitQuery,
    OwnerQuery,
    PrincipalDep,
    SessionDep,
    StateDep,
    listed_owner,
)
from service.errors import ApiError, field_errors
from service.plot import render_comparison
from service.render_cache import cache_of, data_version, etag_matches, png_answer
from service.repo import (
    CURVE_POINTS,
    TERMINAL,
    compared_points,
    comparison_by_id,
    comparison_by_key,
    comparison_jobs,
    comparisons_page,
    delete_jobs,
)
from service.specs import variant
from service.submit import check_fits, check_idempotency_key, check_spec, new_job_row

router = APIRouter(prefix="/v1/comparisons", tags=["comparisons"], route_class=CheckedJSONRoute)

COMPARISON_ID = Path(pattern=r"^[A-Za-z0-9_\-]{1,40}$", description="a comparison id")
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413, 422, 503)
}


def _arm_specs(req: ComparisonRequest) -> list[tuple[str, int, JobSpec]]:
    """(arm, seed, spec) for every job of the comparison; 422 listing every bad arm."""
    out: list[tuple[str, int, JobSpec]] = []
    errors: list[FieldError] = []
    base_name = req.name or req.spec.name
    for i, arm in enumerate(req.arms):
        for seed in req.seeds:
            try:
                spec = variant(
                    req.spec,
                    arm.optimizer.model_dump(mode="python"),
                    seed,
                    f"{base_name}/{arm.name}/seed{seed}"[:200],
                )
            except ValidationError as exc:
                for e in field_errors(list(exc.errors())):
                    e.loc = ["body", "arms", i, *e.loc]
                    errors.append(e)
                break
            out.append((arm.name, seed, spec))
    if errors:
        raise ApiError(422, f"an arm's optimizer does not fit the spec: {errors[0].msg}", errors)
    return out


def _load(s: Session, principal: Principal, comparison_id: str) -> ComparisonRow:
    row = comparison_by_id(s, comparison_id)
    if row is None or (not principal.admin and row.owner != principal.owner):
        raise ApiError(404, f"no comparison with id {comparison_id!r}")
    return row


@router.post("", status_code=202, response_model=Comparison, responses=ERRORS)
def create_comparison(
    request: Request,
    response: Response,
    body: ComparisonRequest,
    principal: PrincipalDep,
    s: SessionDep,
    state: StateDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Comparison:
    """Create one job per (arm, seed), identical but for optimizer and seed."""
    key = check_idempotency_key(idempotency_key)
    check_spec(state, principal.owner, body.spec, ["body", "spec"])
    digest = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
    if key is not None and (existing := comparison_by_key(s, principal.owner, key)) is not None:
        return _idempotent_answer(s, existing, digest, response, request)
    jobs = _arm_specs(body)
    for i, (_arm, _seed, spec) in enumerate(jobs):
        check_spec(state, principal.owner, spec, ["body", "arms", i // len(body.seeds)])
    check_fits(state, body.spec)
    row = ComparisonRow(
        id=uuid.uuid4().hex,
        name=(body.name or body.spec.name)[:200],
        owner=principal.owner,
        baseline=body.baseline,
        arms=[a.name for a in body.arms],
        seeds=list(body.seeds),
        idempotency_key=key,
        request_digest=digest,
    )
    s.add(row)
    for arm, _seed, spec in jobs:
        s.add(new_job_row(spec, principal.owner, comparison=row, arm=arm))
    try:
        s.commit()
    except IntegrityError:
        s.rollback()
        existing = comparison_by_key(s, principal.owner, key) if key else None
        if existing is None:
            raise
        return _idempotent_answer(s, existing, digest, response, request)
    if state.scheduler is not None:
        state.scheduler.wake()
    response.headers["Location"] = str(request.url_for("get_comparison", comparison_id=row.id))
    return _summary(s, row)


def _idempotent_answer(
    s: Session, row: ComparisonRow, digest: str, response: Response, request: Request
) -> Comparison:
    """The comparison an earlier request with the same Idempotency-Key created; 409 when
    that request was another one (comparisons made before 0002 have no digest)."""
    if row.request_digest is not None and row.request_digest != digest:
        raise ApiError(
            409,
            "Idempotency-Key was already used for a different comparison request "
            f"(comparison {row.id}); use a new key for a new comparison",
        )
    response.headers["Location"] = str(request.url_for("get_comparison", comparison_id=row.id))
    return _summary(s, row)


def _runs(
    s: Session, row: ComparisonRow, *, curves: bool, max_points: int = CURVE_POINTS
) -> dict[str, list[RunData]]:
    """Every job's compared metrics, grouped by arm in the comparison's arm order.

    Only what `service.compare.summarize` reads: validation loss in full, the first
    training-loss point (the run's time origin), the middle throughput values (their
    median is the run's), the largest memory values and the last optimizer-state size;
    `curves=True` adds the training-loss curve (the plot draws both losses), whole up
    to `max_points` points and from the rollups beyond (at most `max_points` bucket
    means, at each bucket's last step; `service.rollups`). A 100k-step run has about
    half a million points, and the dashboard asks for the summary every few seconds.
    """
    arms: dict[str, list[RunData]] = {name: [] for name in row.arms}
    by_seq: dict[int, RunData] = {}
    for job in row.jobs:
        run = RunData(job_id=job.id, seed=int(job.seed or 0), status=JobStatus(job.status))
        arms.setdefault(job.arm or "?", []).append(run)
        by_seq[job.seq] = run
    if not by_seq:
        return arms
    points = compared_points(
        s,
        list(by_seq),
        curves=(VAL_LOSS,),  # whole: final values and first reach need every point
        first=(TRAIN_LOSS,),  # the run's time origin
        coarse=(TRAIN_LOSS,) if curves else (),  # at most max_points points, from rollups
        max_points=max_points,
        last=(OPTIM_STATE_BYTES,),
        medians=(TRAIN_TOKENS_PER_S,),
        peaks=(MEM_PEAK_ALLOCATED_BYTES, MEM_PEAK_RSS_BYTES),
    )
    for job_seq, name, step, value, t in sorted(points, key=lambda p: (p[0], p[1], p[2])):
        series = by_seq[job_seq].series.setdefault(name, Series())
        if series.steps and series.steps[-1] == step:
            continue  # the exact first point, and the bucket that ends there
        series.steps.append(step)
        series.values.append(float("nan") if value is None else value)
        series.times.append(t)
    return arms


def _summary(s: Session, row: ComparisonRow) -> Comparison:
    arms = _runs(s, row, curves=False)
    summaries = summarize(arms, row.baseline)
    return Comparison(
        id=row.id,
        name=row.name,
        owner=row.owner,
        status=combined_status([a.status for a in summaries]),
        baseline=row.baseline,
        seeds=list(row.seeds),
        created_at=row.created_at,
        arms=summaries,
    )


@router.get("", response_model=ComparisonList, responses=ERRORS)
def list_comparisons(
    principal: PrincipalDep,
    s: SessionDep,
    owner: OwnerQuery = None,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> ComparisonList:
    """Comparisons, newest first, with their jobs' combined status (the results are in
    `GET /v1/comparisons/{id}`). Users see their own; admins all, or one owner's."""
    visible, owner = listed_owner(principal, owner)
    if not visible:
        return ComparisonList(items=[], next_cursor=None)
    rows, raw_statuses, more = comparisons_page(
        s, owner=owner, limit=limit, cursor=None if cursor is None else int(cursor)
    )
    statuses = {seq: [JobStatus(x) for x in found] for seq, found in raw_statuses.items()}
    return ComparisonList(
        items=[
            ComparisonInfo(
                id=row.id,
                name=row.name,
                owner=row.owner,
                status=combined_status(statuses[row.seq]),
                baseline=row.baseline,
                arms=list(row.arms),
                seeds=list(row.seeds),
                jobs=len(statuses[row.seq]),
                created_at=row.created_at,
            )
            for row in rows
        ],
        next_cursor=str(rows[-1].seq) if more and rows else None,
    )


@router.get("/{comparison_id}", response_model=Comparison, responses=ERRORS)
def get_comparison(
    comparison_id: Annotated[str, COMPARISON_ID],
    principal: PrincipalDep,
    s: SessionDep,
    request: Request,
) -> Comparison:
    """Per arm: status, final/best validation loss (mean, spread), difference to the
    baseline, steps and time to reach the baseline's final loss, throughput ratio,
    memory overhead and optimizer-state ratio."""
    row = _load(s, principal, comparison_id)
    # computed again only when a job's status or points changed (service.render_cache)
    key = ("summary", row.id, _data_version(s, row))
    return cache_of(request.app.state).get_or_compute(key, lambda: _summary(s, row))


def _data_version(s: Session, row: ComparisonRow) -> str:
    return data_version(s, [(job.seq, job.status) for job in row.jobs])


@router.delete("/{comparison_id}", status_code=204, response_class=Response, responses=ERRORS)
def delete_comparison(
    comparison_id: Annotated[str, COMPARISON_ID], principal: PrincipalDep, s: SessionDep
) -> Response:
    """Delete a comparison whose jobs have all ended, with those jobs and their metrics."""
    row = _load(s, principal, comparison_id)
    jobs = comparison_jobs(s, row.seq)
    running = [(job_id, status) for _, job_id, status in jobs if status not in TERMINAL]
    if running:
        listed = ", ".join(f"{job_id} ({status})" for job_id, status in running[:5])
        raise ApiError(
            409,
            f"comparison {comparison_id} still has {len(running)} unfinished job(s): {listed}; "
            "cancel them first (POST /v1/jobs/{id}/cancel)",
        )
    delete_jobs(s, [seq for seq, _, _ in jobs], comparison_seq=row.seq)
    return Response(status_code=204)


@router.get("/{comparison_id}/curves", response_model=ComparisonCurves, responses=ERRORS)
def get_comparison_curves(
    comparison_id: Annotated[str, COMPARISON_ID],
    principal: PrincipalDep,
    s: SessionDep,
    max_points: Annotated[
        int, Query(ge=2, le=100_000, description="downsample each curve to this many steps")
    ] = DEFAULT_MAX_POINTS,
) -> ComparisonCurves:
    """Per arm, the mean over seeds of its training and validation loss with the band
    mean +- sample std: the numbers `plot.png` draws (at the default max_points) and the
    dashboard shows. Seeds are interpolated onto the union of their steps, each within
    its own range; `n` says how many seeds contribute at each step."""
    row = _load(s, principal, comparison_id)
    # long curves come from the rollups at no fewer points than asked (service.curves
    # then downsamples what it gets)
    arms = _runs(s, row, curves=True, max_points=max(max_points, CURVE_POINTS))
    return comparison_curves(row.id, row.baseline, arms, arm_bands(arms, max_points=max_points))


@router.get(
    "/{comparison_id}/plot.png",
    response_class=Response,
    responses={**ERRORS, 200: {"content": {"image/png": {}}}},
)
async def comparison_plot(
    comparison_id: Annotated[str, COMPARISON_ID],
    principal: PrincipalDep,
    state: StateDep,
    request: Request,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """Loss curves of all arms (mean with a band over seeds) and the memory overhead.

    The ETag is the comparison's data version (its jobs' statuses and stored points):
    a request with a matching If-None-Match gets 304, and an unchanged plot is drawn
    once per server process (`service.render_cache`)."""
    cache = cache_of(request.app.state)

    def draw() -> tuple[str, bytes | None]:
        with state.factory() as s:
            row = _load(s, principal, comparison_id)
            version = _data_version(s, row)
            etag = f'"{version}"'
            if etag_matches(if_none_match, etag):
                return etag, None

            def render() -> bytes:
                arms = _runs(s, row, curves=True)
                summaries = summarize(arms, row.baseline)
                return render_comparison(row.name, arm_bands(arms), summaries, row.baseline)

            return etag, cache.get_or_compute(("plot.png", row.id, version), render)

    etag, png = await run_in_threadpool(draw)
    return png_answer(etag, png)
