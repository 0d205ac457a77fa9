"""/v1/studies: tuning trials per arm and batch size, the winners rerun with seeds, and
the AlgoPerf-style answer (`service.study_analysis`)."""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections import Counter
from typing import Annotated, Any

from alto_client.models import ErrorResponse, FieldError, JobStatus
from alto_client.study import Study, StudyInfo, StudyList, StudyPlan, StudyRequest
from fastapi import APIRouter, Header, Path, Request, Response
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service.auth import Principal
from service.body import CheckedJSONRoute
from service.cluster import ClusterError
from service.db.tables import StudyRow
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
from service.render_cache import cache_of, data_version, etag_matches, png_answer
from service.repo import TERMINAL, delete_jobs, studies_page, study_by_id, study_by_key, study_jobs
from service.state import ServiceState
from service.study_analysis import summarize_study
from service.study_driver import (
    TUNING,
    cancel_study,
    study_job_row,
    study_request,
    study_runs,
    study_status,
)
from service.study_plan import CostModel, PlannedJob, batch_spec, make_plan, trial_jobs
from service.study_plot import render_study
from service.submit import check_fits, check_idempotency_key, check_spec

router = APIRouter(prefix="/v1/studies", tags=["studies"], route_class=CheckedJSONRoute)

STUDY_ID = Path(pattern=r"^[A-Za-z0-9_\-]{1,40}$", description="a study id")
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413, 422, 503)
}


def _cost_model(state: ServiceState) -> CostModel:
    st = state.settings
    return CostModel(st.plan_flops_per_cpu, st.plan_flops_per_gpu, st.plan_job_overhead_s)


def _checked_plan(
    state: ServiceState, owner: str, body: StudyRequest
) -> tuple[StudyPlan, list[PlannedJob]]:
    """The plan and the tuning jobs of a request, after every check a submission gets:
    the base spec and each derived spec (per batch size and arm) as a job would be
    checked, the cluster's size, and the caps on jobs and tokens."""
    check_spec(state, owner, body.spec, ["body", "spec"])
    for b in body.batch_sizes:
        try:
            spec = batch_spec(body, b)
        except ValidationError as exc:
            errors = field_errors(list(exc.errors()))
            for e in errors:
                e.loc = ["body", "batch_sizes", body.batch_sizes.index(b), *e.loc[1:]]
            raise ApiError(
                422, f"batch size {b} does not give a valid job: {errors[0].msg}", errors
            ) from None
        check_fits(state, spec, f"the study's jobs at batch size {b}")
    try:
        jobs = trial_jobs(body)
    except ValidationError as exc:
        raise ApiError(
            422,
            f"a trial's optimizer does not fit the spec: {field_errors(list(exc.errors()))[0].msg}",
            field_errors(list(exc.errors())),
        ) from None
    seen: set[tuple[int, str]] = set()
    arm_index = {a.name: i for i, a in enumerate(body.arms)}
    for job in jobs:
        if (job.batch_size, job.arm) not in seen:
            seen.add((job.batch_size, job.arm))
            check_spec(state, owner, job.spec, ["body", "arms", arm_index[job.arm]])
    plan = make_plan(body, _cost_model(state), state.capacity.get())
    _check_caps(state, body, plan)
    return plan, jobs


def _check_caps(state: ServiceState, body: StudyRequest, plan: StudyPlan) -> None:
    limit = state.settings.max_study_jobs
    if plan.jobs > limit:
        raise ApiError(
            422,
            f"the study plans {plan.jobs} jobs ({plan.tuning_jobs} tuning, {plan.final_jobs} "
            f"final), over this service's limit of {limit} (max_study_jobs): fewer trials, "
            "seeds, arms or batch sizes",
            [FieldError(loc=["body", "tuning", "trials"], msg="too many jobs in all", type="cap")],
        )
    if body.max_jobs is not None and plan.jobs > body.max_jobs:
        raise ApiError(
            422,
            f"max_jobs: the study plans {plan.jobs} jobs ({plan.tuning_jobs} tuning, "
            f"{plan.final_jobs} final), over its max_jobs of {body.max_jobs}",
            [
                FieldError(
                    loc=["body", "max_jobs"], msg=f"{plan.jobs} > {body.max_jobs}", type="cap"
                )
            ],
        )
    if body.max_tokens is not None and plan.tokens > body.max_tokens:
        raise ApiError(
            422,
            f"max_tokens: the study plans {plan.tokens:,} training tokens in all, over its "
            f"max_tokens of {body.max_tokens:,}",
            [
                FieldError(
                    loc=["body", "max_tokens"], msg=f"{plan.tokens} > {body.max_tokens}", type="cap"
                )
            ],
        )


def _load(s: Session, principal: Principal, study_id: str) -> StudyRow:
    row = study_by_id(s, study_id)
    if row is None or (not principal.admin and row.owner != principal.owner):
        raise ApiError(404, f"no study with id {study_id!r}")
    return row


@router.post("/plan", response_model=StudyPlan, responses=ERRORS)
def plan_study(body: StudyRequest, principal: PrincipalDep, state: StateDep) -> StudyPlan:
    """What a study would run and cost, checked as a submission is; nothing is stored."""
    return _checked_plan(state, principal.owner, body)[0]


@router.post("", status_code=202, response_model=Study, responses=ERRORS)
def create_study(
    request: Request,
    response: Response,
    body: StudyRequest,
    principal: PrincipalDep,
    s: SessionDep,
    state: StateDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Study:
    """Accept a study and queue its tuning phase; the answer carries the plan."""
    key = check_idempotency_key(idempotency_key)
    digest = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
    if key is not None and (existing := study_by_key(s, principal.owner, key)) is not None:
        return _idempotent_answer(s, existing, digest, response, request)
    plan, jobs = _checked_plan(state, principal.owner, body)
    row = StudyRow(
        id=uuid.uuid4().hex,
        name=(body.name or body.spec.name)[:200],
        owner=principal.owner,
        request=body.model_dump(mode="json"),
        plan=plan.model_dump(mode="json"),
        phase=TUNING,
        phase_reason=f"tuning: {plan.tuning_jobs} trials",
        idempotency_key=key,
        request_digest=digest,
    )
    s.add(row)
    for job in jobs:
        s.add(study_job_row(job, row))
    try:
        s.commit()
    except IntegrityError:
        s.rollback()
        existing = study_by_key(s, principal.owner, key) if key else None
        if existing is None:
            raise
        return _idempotent_answer(s, existing, digest, response, request)
    if state.scheduler is not None:
        state.scheduler.wake()
    response.headers["Location"] = str(request.url_for("get_study", study_id=row.id))
    return _summary(s, row)


def _idempotent_answer(
    s: Session, row: StudyRow, digest: str, response: Response, request: Request
) -> Study:
    if row.request_digest != digest:
        raise ApiError(
            409,
            f"Idempotency-Key was already used for a different study request (study {row.id}); "
            "use a new key for a new study",
        )
    response.headers["Location"] = str(request.url_for("get_study", study_id=row.id))
    return _summary(s, row)


def _summary(s: Session, row: StudyRow) -> Study:
    req = study_request(row)
    runs = study_runs(s, row)
    summary = summarize_study(req, runs)
    statuses = [r.status for r in runs]
    return Study(
        id=row.id,
        name=row.name,
        owner=row.owner,
        phase=row.phase,  # type: ignore[arg-type]
        status=study_status(row.phase, statuses),
        phase_reason=row.phase_reason,
        baseline=req.baseline,
        arms=[a.name for a in req.arms],
        batch_sizes=list(req.batch_sizes),
        seeds=list(req.seeds),
        created_at=row.created_at,
        plan=StudyPlan.model_validate(row.plan),
        jobs=dict(Counter(st.value for st in statuses)),
        batches=summary.batches,
        common_target=summary.common_target,
        scaling=summary.scaling,
        findings=summary.findings,
    )


@router.get("", response_model=StudyList, responses=ERRORS)
def list_studies(
    principal: PrincipalDep,
    s: SessionDep,
    owner: OwnerQuery = None,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> StudyList:
    """Studies, newest first, with their phase and status (the results are in
    `GET /v1/studies/{id}`). Users see their own; admins all, or one owner's."""
    visible, owner = listed_owner(principal, owner)
    if not visible:
        return StudyList(items=[], next_cursor=None)
    rows, raw, more = studies_page(
        s, owner=owner, limit=limit, cursor=None if cursor is None else int(cursor)
    )
    items = []
    for row in rows:
        req = row.request
        statuses = [JobStatus(x) for x in raw[row.seq]]
        items.append(
            StudyInfo(
                id=row.id,
                name=row.name,
                owner=row.owner,
                phase=row.phase,
                status=study_status(row.phase, statuses),
                baseline=req["baseline"],
                arms=[a["name"] for a in req["arms"]],
                batch_sizes=list(req["batch_sizes"]),
                jobs=len(statuses),
                created_at=row.created_at,
            )
        )
    return StudyList(items=items, next_cursor=str(rows[-1].seq) if more and rows else None)


@router.get("/{study_id}", response_model=Study, responses=ERRORS)
def get_study(study_id: Annotated[str, STUDY_ID], principal: PrincipalDep, s: SessionDep) -> Study:
    """The plan, the phase, and per batch size and arm: the trials, the chosen point (and
    whether it sits on the range's edge), final validation loss with 95% bootstrap CIs,
    the difference to the baseline and whether it is inside the noise, steps, tokens
    and time to the tuned baseline's loss; across batch sizes, steps to a common target."""
    return _summary(s, _load(s, principal, study_id))


@router.post("/{study_id}/cancel", status_code=202, response_model=Study, responses=ERRORS)
def cancel(
    study_id: Annotated[str, STUDY_ID], principal: PrincipalDep, s: SessionDep, state: StateDep
) -> Study:
    """Cancel a study and all its unfinished jobs."""
    row = _load(s, principal, study_id)
    if row.phase not in ("tuning", "final"):
        raise ApiError(409, f"study {study_id} has already ended ({row.phase}); nothing to cancel")
    stopping = cancel_study(s, row)
    if state.backend is not None:
        for ray_id in stopping:
            # on failure the scheduler stops it on its next pass
            with contextlib.suppress(ClusterError):
                state.backend.stop(ray_id)
    if state.scheduler is not None:
        state.scheduler.wake()
    s.refresh(row)
    return _summary(s, row)


@router.delete("/{study_id}", status_code=204, response_class=Response, responses=ERRORS)
def delete_study(
    study_id: Annotated[str, STUDY_ID], principal: PrincipalDep, s: SessionDep
) -> Response:
    """Delete a study whose jobs have all ended, with those jobs and their metrics."""
    row = _load(s, principal, study_id)
    jobs = study_jobs(s, row.seq)
    running = [(job_id, status) for _, job_id, status, _ in jobs if status not in TERMINAL]
    if running or row.phase in ("tuning", "final"):
        listed = ", ".join(f"{job_id} ({status})" for job_id, status in running[:5])
        raise ApiError(
            409,
            f"study {study_id} is still in its {row.phase} phase"
            + (f" with {len(running)} unfinished job(s): {listed}" if running else "")
            + f"; cancel it first (POST /v1/studies/{study_id}/cancel)",
        )
    delete_jobs(s, [seq for seq, _, _, _ in jobs], study_seq=row.seq)
    return Response(status_code=204)


@router.get(
    "/{study_id}/plot.png",
    response_class=Response,
    responses={**ERRORS, 200: {"content": {"image/png": {}}}},
)
async def study_plot(
    study_id: Annotated[str, STUDY_ID],
    principal: PrincipalDep,
    state: StateDep,
    request: Request,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """Final loss per arm against batch size (95% CIs), tuning curves, steps to the
    common target on log-log axes with the perfect-scaling line, and loss curves.

    The ETag is the study's data version (its phase and its jobs' statuses and points):
    a matching If-None-Match gets 304, and an unchanged plot is drawn once per server
    process (`service.render_cache`)."""
    cache = cache_of(request.app.state)

    def draw() -> tuple[str, bytes | None]:
        with state.factory() as s:
            row = _load(s, principal, study_id)
            extra = f"{row.phase}|{row.updated_at.isoformat()}|{row.chosen!r}"
            version = data_version(s, [(job.seq, job.status) for job in row.jobs], extra)
            etag = f'"{version}"'
            if etag_matches(if_none_match, etag):
                return etag, None

            def render() -> bytes:
                req = study_request(row)
                runs = study_runs(s, row, curves=True)
                return render_study(row.name, summarize_study(req, runs), req, runs)

            return etag, cache.get_or_compute(("study.png", row.id, version), render)

    etag, png = await run_in_threadpool(draw)
    return png_answer(etag, png)
