"""A run's shared storage on an S3-compatible object store.

Checkpoints: Ray Train writes them to ``storage_path`` on a pyarrow S3 filesystem built
here, so a worker group restarted on any node (or a resubmitted job) finds them.

The metric spool: rank 0's ``metrics.jsonl`` (and the reporter's byte offset) live on
the local disk of whichever node rank 0 runs on; a worker restarted on another node
would find neither, and the points of steps up to the checkpoint that the service had
not yet acknowledged would be lost (later steps are re-logged by the resumed run).
So at every checkpoint rank 0 uploads the spool's new bytes as one segment
(``spool/metrics-<step>.jsonl``, before reporting the checkpoint, so a registered
checkpoint always has its segments) and records the acknowledged offset in the
checkpoint. A resumed rank 0 whose local spool ends before the checkpoint's step
rebuilds it from the segments, byte for byte, and resumes reporting from the recorded
offset; the service is idempotent, so a re-sent point is harmless.

Credentials: the filesystem is built with none, so the AWS SDK's default chain finds
them on each node (environment, shared credentials file, web identity). Built that
way it also pickles without them (pyarrow pickles explicit keys in clear), and Ray
pickles the filesystem into its controller and workers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

from alto_client.runstorage import RunStorageConfig, StorageConfigError, check_job_key
from alto_client.spec import JobSpec

__all__ = [
    "ObjectSpool",
    "RunStorageConfig",
    "StorageConfigError",
    "filesystem",
    "job_key",
    "last_step",
]

SPOOL_DIR = "spool"
SPOOL_STATE_FILE = "alto_spool.json"
"""Written by rank 0 into each checkpoint: the spool bytes the service had acknowledged."""


def filesystem(config: RunStorageConfig):
    """A pyarrow S3 filesystem for `config`, with no credentials of its own (see above)."""
    from pyarrow.fs import S3FileSystem

    kwargs: dict = {"connect_timeout": 10.0, "request_timeout": 60.0}
    if config.endpoint_url:
        parts = urlsplit(config.endpoint_url)
        kwargs["endpoint_override"] = parts.netloc
        kwargs["scheme"] = parts.scheme
    if config.region:
        kwargs["region"] = config.region
    return S3FileSystem(**kwargs)


def job_key(spec: JobSpec, run_dir: Path) -> str:
    """The job's segment under the operator's prefix: the service's job id (checked, never
    rewritten: a bad one is refused), else the run directory's name made safe."""
    if spec.report is not None:
        return check_job_key(spec.report.job_id)
    name = re.sub(r"[^A-Za-z0-9._-]", "-", run_dir.name).strip(".") or "run"
    return check_job_key(name[:200])


def check_reachable(config: RunStorageConfig, fs=None) -> None:
    """Fail early, naming the bucket, when the store or the bucket cannot be reached."""
    from pyarrow.fs import FileType

    fs = fs or filesystem(config)
    try:
        info = fs.get_file_info(config.bucket)
    except Exception as exc:  # network, TLS, credentials: all reported the same way
        raise StorageConfigError(f"run storage {config.uri}: cannot reach it: {exc}") from None
    if info.type != FileType.Directory:
        raise StorageConfigError(
            f"run storage {config.uri}: bucket {config.bucket!r} does not exist "
            "(the operator creates it)"
        )


def last_step(path: Path) -> int:
    """The step of the last complete line of a metrics JSONL, 0 when there is none."""
    try:
        with path.open("rb") as stream:
            stream.seek(0, 2)
            size = stream.tell()
            stream.seek(max(0, size - 65536))
            tail = stream.read()
    except OSError:
        return 0
    for raw in reversed(tail.split(b"\n")):
        if raw.strip():
            try:
                return int(json.loads(raw)["step"])
            except (ValueError, KeyError, TypeError):
                continue
    return 0


class ObjectSpool:
    """The copy of rank 0's metric spool on the object store: one segment per checkpoint."""

    def __init__(self, fs, job_path: str) -> None:
        self.fs = fs
        self.dir = f"{job_path}/{SPOOL_DIR}"

    def _segment(self, step: int) -> str:
        return f"{self.dir}/metrics-{step:010d}.jsonl"

    def save_segment(self, step: int, data: bytes) -> None:
        """The spool's bytes since the previous checkpoint (whole lines), as of `step`."""
        with self.fs.open_output_stream(self._segment(step)) as stream:
            stream.write(data)

    def segments(self) -> list[tuple[int, str]]:
        from pyarrow.fs import FileSelector, FileType

        try:
            infos = self.fs.get_file_info(FileSelector(self.dir, allow_not_found=True))
        except FileNotFoundError:
            return []
        out = []
        for info in infos:
            match = re.fullmatch(r"metrics-(\d+)\.jsonl", info.base_name)
            if info.type == FileType.File and match:
                out.append((int(match.group(1)), info.path))
        return sorted(out)

    def restore(self, step: int) -> bytes:
        """The spool up to `step`: the segments of checkpoints <= `step`, in order, keeping
        lines of steps <= `step` (a segment of a later, unregistered checkpoint is left)."""
        chunks = []
        for seg_step, path in self.segments():
            if seg_step > step:
                break
            with self.fs.open_input_stream(path) as stream:
                data = stream.read()
            for raw in data.splitlines(keepends=True):
                if raw.strip() and raw.endswith(b"\n") and json.loads(raw)["step"] <= step:
                    chunks.append(raw)
        return b"".join(chunks)


def read_spool_state(ckpt_dir: Path) -> int | None:
    try:
        return int(json.loads((ckpt_dir / SPOOL_STATE_FILE).read_text())["acked_offset"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_spool_state(ckpt_dir: Path, acked_offset: int) -> None:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    (ckpt_dir / SPOOL_STATE_FILE).write_text(json.dumps({"acked_offset": int(acked_offset)}))
