"""The app factory: one FastAPI app per service instance, built from `Settings`."""

from __future__ import annotations

import gc
import importlib
import importlib.util
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from alto_client.metrics import MetricBatch
from fastapi import FastAPI

from service.apidocs import docs_router
from service.auth import ADMIN_OWNER, store_token
from service.cluster import ClusterBackend, RayJobsBackend
from service.db.migrate import upgrade
from service.db.session import make_engine, make_session_factory
from service.errors import install_error_handlers
from service.guard import AuthBeforeBody
from service.headers import SecurityHeaders
from service.limits import BodySizeLimit
from service.prom import ServiceMetrics
from service.routers import comparisons, events, health, jobs, studies
from service.scheduler import Scheduler
from service.settings import Settings
from service.state import CapacityCache, ServiceState, TokenCache

log = logging.getLogger(__name__)

API_VERSION = "1.0.0"


def create_app(
    settings: Settings | None = None,
    backend: ClusterBackend | None = None,
    start_scheduler: bool = True,
) -> FastAPI:
    """Build the service: migrate the database, wire the cluster backend and scheduler.

    `backend` overrides the Ray backend made from `settings.ray_address` (tests pass an
    in-process cluster). With `start_scheduler=False` nothing runs in the background;
    call `app.state.svc.scheduler.run_once()` to advance jobs deterministically.
    """
    settings = settings or Settings()
    engine = make_engine(settings.resolved_database_url(), settings.db_pool_size)
    upgrade(engine)
    factory = make_session_factory(engine)
    if settings.admin_token:
        store_token(factory, settings.admin_token, ADMIN_OWNER, admin=True)
    if backend is None and settings.ray_address:
        backend = RayJobsBackend(settings.ray_address, auth_token=settings.ray_auth_token)
    public_url = (settings.public_url or "http://127.0.0.1:8000").rstrip("/")
    scheduler = (
        Scheduler(
            factory,
            backend,
            settings.engine_entrypoint,
            lambda: public_url,
            interval_s=settings.scheduler_interval_s,
            job_env=settings.job_env,
        )
        if backend is not None
        else None
    )
    svc = ServiceState(
        settings=settings,
        engine=engine,
        factory=factory,
        backend=backend,
        scheduler=scheduler,
        metrics=ServiceMetrics(factory, scheduler),
        tokens=TokenCache(factory),
        capacity=CapacityCache(backend),
        public_url=public_url,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        _freeze_startup_heap()
        if scheduler is not None and start_scheduler:
            scheduler.start()
        try:
            yield
        finally:
            if scheduler is not None:
                scheduler.stop()
            close = getattr(backend, "close", None)
            if callable(close):
                close()
            engine.dispose()

    openapi_url = "/openapi.json" if settings.api_docs else None
    app = FastAPI(
        title="ALTO service",
        version=API_VERSION,
        description="Submit training jobs to Ray, follow their metrics, and compare ALTO "
        "with AdamW. Authenticate with `Authorization: Bearer <token>`.",
        lifespan=lifespan,
        openapi_url=openapi_url,
        docs_url=None,  # served by service.apidocs, from files that ship with the service
        redoc_url=None,
    )
    app.state.svc = svc
    install_error_handlers(app)
    if openapi_url is not None:
        app.include_router(docs_router(openapi_url))
        _document_raw_bodies(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(events.router)
    app.include_router(comparisons.router)
    app.include_router(studies.router)
    if importlib.util.find_spec("service.dashboard") is not None:
        dashboard = importlib.import_module("service.dashboard")
        router = getattr(dashboard, "router", None)
        if router is not None:
            app.include_router(router)
    # the last added runs first: time everything, stamp headers on every answer, refuse
    # unauthenticated bodies before anything reads them, then cap what may be read
    app.add_middleware(
        BodySizeLimit,
        upload_max_bytes=settings.max_body_bytes,
        other_max_bytes=4 * settings.max_spec_bytes,
    )
    app.add_middleware(AuthBeforeBody)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(_TimingMiddleware, metrics=svc.metrics)
    return app


def _freeze_startup_heap() -> None:
    """Move everything alive at start-up (modules, the app, SQLAlchemy's and pydantic's
    structures) out of the garbage collector's reach. Otherwise each full collection
    walks all of it while holding the GIL: 100-150 ms pauses of the event loop, set off
    by the allocations of a metric upload, measured with a 10,000-point upload."""
    gc.collect()
    gc.freeze()


def _document_raw_bodies(app: FastAPI) -> None:
    """Add the schemas of bodies that routes read raw (metric uploads, parsed off the
    event loop by `service.ingest`) to the OpenAPI document's components."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        batch = MetricBatch.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(batch.pop("$defs", {}))
        components["MetricBatch"] = batch
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


class _TimingMiddleware:
    """Request-latency histogram (outermost, so it times everything)."""

    def __init__(self, app: object, metrics: ServiceMetrics) -> None:
        self._inner = metrics.asgi(app)  # type: ignore[arg-type]

    async def __call__(self, scope: object, receive: object, send: object) -> None:
        await self._inner(scope, receive, send)  # type: ignore[arg-type]
