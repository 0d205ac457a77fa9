"""Service configuration, read from flags or ALTO_* environment variables.

One object carries every knob so the app factory, the embedded server and the tests
build the same service from the same description.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_metric_points_per_request: int = Field(default=100_000, ge=1)
    max_points_default: int = Field(default=2000, ge=2)
    sse_poll_interval_s: float = Field(default=0.5, gt=0, le=10)
    sse_max_duration_s: float = Field(default=3600.0, gt=0)

    def resolved_database_url(self) -> str:
        """The database URL to use: the given one, or SQLite in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'alto.db').resolve()}"
