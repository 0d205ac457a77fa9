"""Service configuration, read from flags or ALTO_* environment variables.

One object carries every knob so the app factory, the embedded server and the tests
build the same service from the same description.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Annotated

from alto_client.runstorage import (
    RunStorageConfig,
    StorageConfigError,
    parse_endpoint_url,
    parse_region,
    parse_storage_uri,
)
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

OWNER_PLACEHOLDER = "{owner}"
SAFE_OWNER = re.compile(r"[A-Za-z0-9._@+-]{1,200}")


def _default_data_dir() -> Path:
    return Path.home() / ".alto"


class Settings(BaseSettings):
    """All settings of the service; each field `x` is also read from `ALTO_X`."""

    model_config = SettingsConfigDict(env_prefix="ALTO_", extra="ignore")

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Directory for the SQLite database and service state.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL (postgresql+psycopg://...); default: SQLite in data_dir.",
    )
    ray_address: str | None = Field(
        default=None,
        description="Ray dashboard (job API) URL, e.g. http://127.0.0.1:8265. "
        "Unset: `serve` starts a local Ray head for itself.",
    )
    public_url: str | None = Field(
        default=None,
        description="URL at which Ray jobs reach this service to post metrics; "
        "default http://127.0.0.1:<port>.",
    )
    admin_token: str | None = Field(
        default=None, description="An admin bearer token fixed at start (ALTO_ADMIN_TOKEN)."
    )
    engine_entrypoint: str = Field(
        default="python -m engine.run",
        description="Command the Ray job runs; the spec is passed as `env:ALTO_JOB_SPEC`.",
    )
    ray_auth_token: str | None = Field(
        default=None,
        description="Ray's cluster token (default: RAY_AUTH_TOKEN or ~/.ray/auth_token).",
    )
    db_pool_size: int = Field(
        default=48,
        ge=1,
        le=1000,
        description="Database connections kept open; keep it above the API's 40 threads.",
    )
    scheduler_interval_s: float = Field(default=1.0, gt=0, le=60)
    max_body_bytes: int = Field(
        default=2 * 1024 * 1024,
        ge=1024,
        description="Largest request body (a metric upload); bodies of other requests are "
        "capped at 4 * max_spec_bytes.",
    )
    max_metric_points_per_request: int = Field(
        default=10_000,
        ge=1,
        le=100_000,
        description="Points in one upload; kept small so that one upload never holds the "
        "API for long (the engine sends 500 at a time).",
    )
    max_spec_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        le=96 * 1024,
        description="Largest job spec, as JSON; specs travel to Ray in one environment "
        "variable, which Linux caps at 128 KiB.",
    )
    data_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Directories (on the cluster's shared storage) that `data.path` and "
        "`data.files` of a spec must resolve inside, separated by ':' (os.pathsep). "
        "'{owner}' in a root stands for the submitting token's owner, e.g. "
        "/datasets:/home/{owner}/data. Empty: specs may only use the built-in corpus.",
    )
    cluster_cache_dir: str | None = Field(
        default=None,
        description="Where the engine caches tokenized datasets on the cluster (passed to "
        "jobs as ALTO_CACHE_DIR). It must not be writable by users, and never lies inside "
        "a data root. Default: the engine's own default on the workers.",
    )
    metrics_token: str | None = Field(
        default=None,
        description="Bearer token a Prometheus scraper sends to GET /metrics (besides any "
        "admin token). /metrics answers 401 without one of them.",
    )
    api_docs: bool = Field(
        default=True,
        description="Serve /docs (Swagger UI, from files that ship with the service, no "
        "CDN) and /openapi.json.",
    )
    max_study_jobs: int = Field(
        default=2000,
        ge=1,
        description="Most jobs one study may plan (tuning trials and final runs together); "
        "a study's own max_jobs can only lower it.",
    )
    plan_flops_per_cpu: float = Field(
        default=1.5e10,
        gt=0,
        description="Sustained training FLOP/s of one CPU core, for study cost estimates "
        "(measured: the tiny MoE demo on a 2-core machine).",
    )
    plan_flops_per_gpu: float = Field(
        default=3.0e14,
        gt=0,
        description="Sustained training FLOP/s of one GPU, for study cost estimates (about "
        "a third of an H100/H200's dense bf16 peak).",
    )
    plan_job_overhead_s: float = Field(
        default=40.0,
        ge=0,
        description="Start-up seconds of one job (Ray job, workers, imports, data), for "
        "study cost estimates.",
    )
    run_storage: str | None = Field(
        default=None,
        description="Object store for checkpoints and the metric spool's copy, as "
        "s3://bucket/prefix (any S3-compatible store); each job writes under "
        "<prefix>/<job id>/. Unset: each job's run directory on the node (one machine only).",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="http(s)://host:port of an S3-compatible server (MinIO, Ceph, "
        "GCS interoperability); unset for AWS S3.",
    )
    s3_region: str | None = Field(default=None, description="Region of the bucket.")
    s3_access_key_id: str | None = Field(
        default=None,
        description="Access key for the run storage, given to the local Ray head's "
        "environment (never to a job's): with an external Ray cluster, put credentials "
        "on its nodes instead (docs/deploy.md).",
    )
    s3_secret_access_key: SecretStr | None = Field(
        default=None,
        description="Secret key that goes with s3_access_key_id (same rules).",
    )
    max_points_default: int = Field(default=2000, ge=2)
    sse_poll_interval_s: float = Field(default=0.5, gt=0, le=10)
    sse_max_duration_s: float = Field(default=3600.0, gt=0)

    @field_validator("data_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            return [part for part in value.split(os.pathsep) if part.strip()]
        return value

    @field_validator("data_roots")
    @classmethod
    def _absolute_roots(cls, roots: list[str]) -> list[str]:
        for root in roots:
            path = PurePosixPath(root)
            if not path.is_absolute() or ".." in path.parts:
                raise ValueError(
                    f"data_roots: {root!r} must be an absolute path without '..' components"
                )
            if OWNER_PLACEHOLDER in root and root.count("{") != 1:
                raise ValueError(f"data_roots: {root!r} may hold '{{owner}}' once at most")
        return roots

    @field_validator("run_storage")
    @classmethod
    def _storage_uri(cls, value: str | None) -> str | None:
        if not value or not value.strip():
            return None
        bucket, prefix = parse_storage_uri(value, "run_storage")
        return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"

    @field_validator("s3_endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return parse_endpoint_url(value, "s3_endpoint_url") if value and value.strip() else None

    @field_validator("s3_region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        return parse_region(value, "s3_region") if value and value.strip() else None

    @model_validator(mode="after")
    def _storage_complete(self) -> Settings:
        stray = [
            name
            for name in ("s3_endpoint_url", "s3_region", "s3_access_key_id", "s3_secret_access_key")
            if getattr(self, name) is not None
        ]
        if stray and self.run_storage is None:
            raise ValueError(
                f"{', '.join(stray)} set without run_storage: set run_storage "
                "(ALTO_RUN_STORAGE=s3://bucket/prefix) or unset them"
            )
        if (self.s3_access_key_id is None) != (self.s3_secret_access_key is None):
            raise ValueError("s3_access_key_id and s3_secret_access_key go together")
        return self

    @field_validator("cluster_cache_dir")
    @classmethod
    def _absolute_cache(cls, value: str | None) -> str | None:
        if value is not None and not PurePosixPath(value).is_absolute():
            raise ValueError(f"cluster_cache_dir: {value!r} must be an absolute path")
        return value

    def roots_for(self, owner: str) -> list[str]:
        """The data roots of one owner: `data_roots` with '{owner}' filled in. A root with
        '{owner}' is left out for an owner whose name is not a plain file name (it could
        climb out of the root: '..', 'a/b')."""
        safe = SAFE_OWNER.fullmatch(owner) is not None and owner not in (".", "..")
        return [
            root.replace(OWNER_PLACEHOLDER, owner)
            for root in self.data_roots
            if OWNER_PLACEHOLDER not in root or safe
        ]

    def job_env(self, owner: str) -> dict[str, str]:
        """Environment variables every job of `owner` gets from these settings."""
        env = {"ALTO_DATA_ROOTS": os.pathsep.join(self.roots_for(owner))}
        if self.cluster_cache_dir:
            env["ALTO_CACHE_DIR"] = self.cluster_cache_dir
        storage = self.storage_config()
        if storage is not None:  # where, never with what key: jobs' env is public on Ray
            env.update(storage.to_env())
        return env

    def storage_config(self) -> RunStorageConfig | None:
        """The run storage these settings name (already validated), or None."""
        if self.run_storage is None:
            return None
        try:
            return RunStorageConfig.parse(self.run_storage, self.s3_endpoint_url, self.s3_region)
        except StorageConfigError as exc:  # pragma: no cover - the validators ran first
            raise ValueError(str(exc)) from None

    def node_env(self) -> dict[str, str]:
        """Credentials for the Ray nodes the service starts itself (the local head):
        its processes, and so every job's workers, inherit them; no job carries them."""
        if self.s3_access_key_id is None or self.s3_secret_access_key is None:
            return {}
        return {
            "AWS_ACCESS_KEY_ID": self.s3_access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.s3_secret_access_key.get_secret_value(),
        }

    def resolved_database_url(self) -> str:
        """The database URL to use: the given one, or SQLite in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'alto.db').resolve()}"
