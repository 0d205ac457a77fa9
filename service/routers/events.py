"""GET /v1/jobs/{id}/events: a live stream of a job's new metric points and status.

Events (server-sent, JSON data):
- `status`: the job (as in GET /v1/jobs/{id}) whenever its status or reason changes,
  and once at the start;
- `metrics`: `{"points": [MetricPoint, ...]}` with the points stored since the last
  event; its SSE id is a cursor, so a reconnect with `Last-Event-ID` resumes exactly.
The stream ends after the job has ended and its last points were sent.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from alto_client.models import ErrorResponse
from fastapi import APIRouter, Header, Path, Request
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from service.auth import Principal
from service.deps import PrincipalDep, StateDep
from service.errors import ApiError
from service.repo import TERMINAL, finite_or_none, points_after, to_wire
from service.routers.jobs import load_job
from service.state import ServiceState

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

BATCH = 5000


def _snapshot(
    state: ServiceState, principal: Principal, job_id: str, after_id: int
) -> dict[str, Any]:
    """The job and up to BATCH points stored after metric row `after_id` (one DB visit)."""
    with state.factory() as s:
        row = load_job(s, principal, job_id)
        points = points_after(s, row.seq, after_id, BATCH)
        job = to_wire(row)
        return {
            "job": job.model_dump(mode="json"),
            "status": (job.status.value, job.status_reason),
            "terminal": row.status in TERMINAL,
            "points": [
                {"step": st, "name": n, "value": finite_or_none(v), "time": t}
                for _, st, n, v, t in points
            ],
            "last_id": points[-1][0] if points else after_id,
            "full": len(points) == BATCH,
        }


@router.get(
    "/{job_id}/events",
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "server-sent events"},
        **{code: {"model": ErrorResponse} for code in (401, 404, 422)},
    },
)
async def job_events(
    request: Request,
    job_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_\-]{1,40}$")],
    principal: PrincipalDep,
    state: StateDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> EventSourceResponse:
    """Live metric points and status changes of a job (server-sent events)."""
    after = 0
    if last_event_id:
        if not last_event_id.isdigit() or len(last_event_id) > 18:
            raise ApiError(
                400, f"Last-Event-ID must be an event id from this stream, got {last_event_id!r}"
            )
        after = int(last_event_id)
    first = await run_in_threadpool(_snapshot, state, principal, job_id, after)
    interval = state.settings.sse_poll_interval_s
    deadline = time.monotonic() + state.settings.sse_max_duration_s

    async def stream() -> AsyncIterator[dict[str, str]]:
        snap = first
        last_status: tuple[str, str | None] | None = None
        last_id = after
        while True:
            if snap["status"] != last_status:
                last_status = snap["status"]
                yield {"event": "status", "data": json.dumps(snap["job"])}
            if snap["points"]:
                last_id = snap["last_id"]
                yield {
                    "event": "metrics",
                    "id": str(last_id),
                    "data": json.dumps({"points": snap["points"]}),
                }
            if snap["terminal"] and not snap["full"]:
                return
            if time.monotonic() > deadline or await request.is_disconnected():
                return
            if not snap["full"]:
                await asyncio.sleep(interval)
            try:
                snap = await run_in_threadpool(_snapshot, state, principal, job_id, last_id)
            except ApiError:  # the (ended) job was deleted meanwhile: nothing more to send
                return

    return EventSourceResponse(stream(), ping=15)
