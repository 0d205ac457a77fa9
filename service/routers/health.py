"""Liveness, readiness and Prometheus metrics (no authentication: probes and scrapers)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from service.deps import StateDep

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up and serving."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "database or Ray unreachable"}})
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
        return out

    checks = await run_in_threadpool(check)
    ready = checks["database"] == "ok" and checks["ray"] == "ok"
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(state: StateDep) -> Response:
    """Prometheus exposition: jobs by status, queue length, request latencies."""
    return await run_in_threadpool(state.metrics.render)
