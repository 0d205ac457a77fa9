"""Liveness and readiness (no authentication: probes), and Prometheus metrics (behind the
scrape token or an admin token)."""

from __future__ import annotations

import hmac

from alto_client.models import ErrorResponse
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from service.deps import StateDep, bearer_token
from service.errors import ApiError
from service.guard import UNAUTHORIZED_HEADERS

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up and serving."""
    return {"status": "ok"}


@router.get(
    "/readyz", responses={503: {"description": "database or Ray unreachable, or scheduler failing"}}
)
async def readyz(state: StateDep) -> JSONResponse:
    """Ready when the database answers and the Ray cluster (if configured) answers."""

    def check() -> dict[str, str]:
        out: dict[str, str] = {}
        try:
            with state.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            out["database"] = "ok"
        except Exception as exc:
            out["database"] = f"error: {type(exc).__name__}"
        if state.backend is None:
            out["ray"] = "not configured"
        else:
            out["ray"] = "ok" if state.backend.ping() else "unreachable"
        if state.scheduler is not None:
            problem = state.scheduler.healthy()
            out["scheduler"] = "ok" if problem is None else f"error: {problem[:300]}"
        return out

    checks = await run_in_threadpool(check)
    ready = checks["database"] == "ok" and checks["ray"] == "ok"
    ready = ready and checks.get("scheduler", "ok") == "ok"
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, 401: {"model": ErrorResponse}},
)
async def metrics(request: Request, state: StateDep) -> Response:
    """Prometheus exposition: jobs by status, queue length, request latencies, scheduler
    passes. It counts every owner's jobs, so it needs the operator's scrape token
    (`metrics_token`) or an admin token: `Authorization: Bearer <token>`."""
    token = bearer_token(request)
    scrape = state.settings.metrics_token
    if not (scrape and hmac.compare_digest(token.encode(), scrape.encode())):
        principal = await run_in_threadpool(state.tokens.get, token)
        if principal is None or not principal.admin:
            raise ApiError(
                401,
                "/metrics needs the scrape token (ALTO_METRICS_TOKEN) or an admin token",
                headers=UNAUTHORIZED_HEADERS,
            )
    return await run_in_threadpool(state.metrics.render)
