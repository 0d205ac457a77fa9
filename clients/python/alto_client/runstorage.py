"""Run storage on an S3-compatible object store: the settings the service and the engine
share.

Checkpoints (Ray Train's ``storage_path``) and the copy of a run's metric spool go to
``s3://BUCKET/PREFIX/<job id>/``. The operator chooses the bucket, the prefix and the
endpoint (service settings, or the environment of a hand-run engine); a job spec has no
say in any of it, and the job id is checked to be one plain path segment, so no job can
write outside the operator's prefix.

Only these non-secret values travel with a job (the Ray job API serves and logs a job's
environment). Credentials never do: the engine builds its S3 filesystem without any, so
the AWS SDK's default chain finds them on each Ray node (``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY`` in the node's environment, a shared credentials file, or a
web identity such as IRSA).

Pure standard library: the service imports it without the engine.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

STORAGE_ENV = "ALTO_RUN_STORAGE"
ENDPOINT_ENV = "ALTO_S3_ENDPOINT_URL"
REGION_ENV = "ALTO_S3_REGION"
#: every variable a job may receive about its storage; none of them is a secret
JOB_ENV_NAMES = (STORAGE_ENV, ENDPOINT_ENV, REGION_ENV)

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,200}")
_REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")


class StorageConfigError(ValueError):
    """A storage setting is malformed; the message names the setting."""


@dataclass(frozen=True)
class RunStorageConfig:
    """Where runs keep checkpoints: ``s3://bucket/prefix`` plus how to reach the store."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.root_path}"

    @property
    def root_path(self) -> str:
        """The operator's prefix as a path on the S3 filesystem (bucket first)."""
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket

    def job_path(self, job_key: str) -> str:
        """The job's own prefix (``bucket/prefix/<job_key>``); `job_key` must be one
        plain path segment."""
        return f"{self.root_path}/{check_job_key(job_key)}"

    def job_uri(self, job_key: str) -> str:
        return f"s3://{self.job_path(job_key)}"

    def to_env(self) -> dict[str, str]:
        """The job environment that describes this storage (never a credential)."""
        env = {STORAGE_ENV: self.uri}
        if self.endpoint_url:
            env[ENDPOINT_ENV] = self.endpoint_url
        if self.region:
            env[REGION_ENV] = self.region
        return env

    @classmethod
    def parse(
        cls, uri: str, endpoint_url: str | None = None, region: str | None = None
    ) -> RunStorageConfig:
        bucket, prefix = parse_storage_uri(uri)
        return cls(
            bucket=bucket,
            prefix=prefix,
            endpoint_url=parse_endpoint_url(endpoint_url) if endpoint_url else None,
            region=parse_region(region) if region else None,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RunStorageConfig | None:
        """The storage the environment names, or None (local run directory). Endpoint or
        region without a storage URI is a mistake, not a default."""
        env = os.environ if environ is None else environ
        uri = (env.get(STORAGE_ENV) or "").strip()
        endpoint = (env.get(ENDPOINT_ENV) or "").strip() or None
        region = (env.get(REGION_ENV) or "").strip() or None
        if not uri:
            stray = [n for n, v in ((ENDPOINT_ENV, endpoint), (REGION_ENV, region)) if v]
            if stray:
                raise StorageConfigError(
                    f"{', '.join(stray)} is set but {STORAGE_ENV} is not: set "
                    f"{STORAGE_ENV}=s3://bucket/prefix, or unset {', '.join(stray)}"
                )
            return None
        return cls.parse(uri, endpoint, region)


def parse_storage_uri(uri: str, setting: str = STORAGE_ENV) -> tuple[str, str]:
    """``s3://bucket[/prefix]`` -> (bucket, prefix); anything else is refused by name."""
    text = uri.strip()
    scheme, sep, rest = text.partition("://")
    if not sep or scheme != "s3":
        hint = (
            " (Google Cloud Storage: use its S3 interoperability endpoint "
            "https://storage.googleapis.com with HMAC keys and an s3:// URI)"
            if scheme in ("gs", "gcs")
            else ""
        )
        raise StorageConfigError(
            f"{setting}: {uri!r} must be an s3://bucket/prefix URI{hint}; other "
            "S3-compatible stores (MinIO, Ceph, R2) take an s3:// URI and an endpoint URL"
        )
    if any(c in rest for c in "?#@\\") or any(c.isspace() for c in rest):
        raise StorageConfigError(
            f"{setting}: {uri!r} must hold only a bucket and a prefix: no query, fragment, "
            "credentials or spaces (credentials belong on the Ray nodes, not in the URI)"
        )
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise StorageConfigError(
            f"{setting}: bucket {bucket!r} is not a valid S3 bucket name "
            "(3-63 characters: lower-case letters, digits, '.' and '-')"
        )
    parts = [p for p in prefix.rstrip("/").split("/")] if prefix.rstrip("/") else []
    for part in parts:
        if not _SEGMENT.fullmatch(part) or part in (".", ".."):
            raise StorageConfigError(
                f"{setting}: prefix segment {part!r} of {uri!r} is not allowed (use letters, "
                "digits, '.', '_' and '-'; no empty, '.' or '..' segments)"
            )
    return bucket, "/".join(parts)


def parse_endpoint_url(url: str, setting: str = ENDPOINT_ENV) -> str:
    """``http(s)://host[:port]`` of an S3-compatible server, normalised without a slash."""
    text = url.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise StorageConfigError(f"{setting}: {url!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StorageConfigError(
            f"{setting}: {url!r} must be http://host[:port] or https://host[:port] "
            "(the scheme says whether the store speaks TLS)"
        )
    if parts.username or parts.password:
        raise StorageConfigError(
            f"{setting}: {url!r} must not carry credentials; they belong on the Ray nodes"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise StorageConfigError(
            f"{setting}: {url!r} must be a server address without a path, query or fragment "
            "(the bucket goes in the s3:// URI)"
        )
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def parse_region(region: str, setting: str = REGION_ENV) -> str:
    text = region.strip()
    if not _REGION.fullmatch(text):
        raise StorageConfigError(
            f"{setting}: {region!r} is not a region name (e.g. us-east-1, auto for R2)"
        )
    return text


def check_job_key(key: str) -> str:
    """A job's directory under the operator's prefix: exactly one plain path segment."""
    if not _SEGMENT.fullmatch(key) or key in (".", ".."):
        raise StorageConfigError(
            f"job id {key!r} cannot name a storage prefix (letters, digits, '.', '_', '-')"
        )
    return key
