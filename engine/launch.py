"""Run a validated spec on Ray Train: start/connect Ray, build the TorchTrainer, fit.

Kept apart from the CLI so tests and the benchmark can launch jobs in-process
(sharing one Ray instance) and get the run directory back.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from alto_client.spec import JobSpec

from engine.preflight import preflight
from engine.reporting import METRICS_FILE, OFFSET_FILE
from engine.storage import RunStorageConfig, StorageConfigError

FAULT_ENV = "ALTO_ENGINE_FAULT"
"""Test hook: ``STEP[:RANK[:wipe]]`` kills that worker with SIGKILL once, after STEP;
``wipe`` first deletes rank 0's local metric spool, as if rank 0's node were lost too."""

_WORKER_ENV = {
    # megatron warns at import about missing TE/apex and deprecations, per process
    "PYTHONWARNINGS": "ignore",
}


@dataclass
class RunResult:
    run_dir: Path
    ok: bool
    error: str | None
    wall_s: float

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / METRICS_FILE


def default_run_dir(spec: JobSpec) -> Path:
    """``$ALTO_RUNS_DIR`` (default ./runs) / job id or name-timestamp."""
    root = Path(os.environ.get("ALTO_RUNS_DIR", "runs"))
    if spec.report is not None:
        return root / spec.report.job_id
    return root / f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def ensure_ray(num_cpus: float | None = None) -> bool:
    """Connect to RAY_ADDRESS or start a local instance; True if this call started one."""
    import ray

    if ray.is_initialized():
        return False
    env = dict(_WORKER_ENV)
    for name in ("ALTO_CACHE_DIR",):
        if name in os.environ:
            env[name] = os.environ[name]
    runtime_env = {"env_vars": env}
    if os.environ.get("RAY_ADDRESS"):
        # inside a Ray job (the service's launch) the job's own runtime_env applies;
        # passing another here would replace it
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        return False
    cpus = num_cpus if num_cpus is not None else float(os.cpu_count() or 1)
    ray.init(
        address="local",  # a fresh instance, never someone else's cluster on this machine
        num_cpus=int(max(cpus, 1)),
        include_dashboard=False,
        runtime_env=runtime_env,
        log_to_driver=True,
    )
    return True


def ensure_ray_for(spec: JobSpec) -> bool:
    """`ensure_ray` with room for the spec's workers (and at least this machine's CPUs)."""
    r = spec.resources
    return ensure_ray(max(float(os.cpu_count() or 1), r.workers * r.cpus_per_worker + 1))


def fault_from_env(run_dir: Path) -> dict | None:
    value = os.environ.get(FAULT_ENV)
    if not value:
        return None
    step, _, rest = value.partition(":")
    rank, _, mode = rest.partition(":")
    fault = {"step": int(step), "rank": int(rank or 0), "marker": str(run_dir / ".fault_injected")}
    if mode == "wipe":
        fault["wipe"] = [str(run_dir / METRICS_FILE), str(run_dir / OFFSET_FILE)]
    elif mode:
        raise ValueError(f"{FAULT_ENV}: unknown mode {mode!r} (wipe)")
    return fault


def storage_config(
    spec: JobSpec, run_dir: Path, storage: RunStorageConfig | None
) -> tuple[dict, dict | None]:
    """RunConfig's storage arguments and the workers' view of the run storage.

    No object store: Ray Train's files go to ``run_dir/ray`` as before. With one, to
    ``s3://bucket/prefix/<job id>/`` (the job id checked to be one path segment, so a
    job never writes outside the operator's prefix); the store is checked first so that
    a wrong endpoint or a missing bucket fails the job at once, with the bucket named.
    """
    if storage is None:
        return {"storage_path": str(run_dir / "ray")}, None
    from engine.storage import check_reachable, filesystem, job_key

    job_path = storage.job_path(job_key(spec, run_dir))
    fs = filesystem(storage)
    check_reachable(storage, fs)
    worker_view = {
        "bucket": storage.bucket,
        "prefix": storage.prefix,
        "endpoint_url": storage.endpoint_url,
        "region": storage.region,
        "job_path": job_path,
    }
    return {"storage_path": job_path, "storage_filesystem": fs}, worker_view


def launch(
    spec: JobSpec,
    run_dir: Path,
    *,
    start_ray: bool = True,
    storage: RunStorageConfig | str | None = "env",
) -> RunResult:
    """Pre-flight, then train with Ray Train; blocks until the job ends.

    `storage`: where checkpoints and the spool's copy go; by default what the
    environment names (ALTO_RUN_STORAGE, ALTO_S3_ENDPOINT_URL, ALTO_S3_REGION), None for
    the run directory. A storage setting that is wrong or unreachable fails the run.
    """
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "spec.json").write_text(spec.model_dump_json(indent=2))
    try:  # before the data: a wrong setting or an unreachable store fails at once
        if storage == "env":
            storage = RunStorageConfig.from_env()
        storage_args, storage_view = storage_config(spec, run_dir, storage)
    except StorageConfigError as exc:
        return RunResult(run_dir, False, str(exc), 0.0)
    preflight(spec)
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from engine.worker.loop import train_loop

    r = spec.resources
    if start_ray:
        ensure_ray_for(spec)
    gpu = r.device == "gpu"
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "spec": spec.model_dump_json(),
            "run_dir": str(run_dir),
            "fault": fault_from_env(run_dir),
            "storage": storage_view,
        },
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=r.workers,
            use_gpu=gpu,
            resources_per_worker={"CPU": r.cpus_per_worker, **({"GPU": 1} if gpu else {})},
        ),
        run_config=RunConfig(
            name="train",
            **storage_args,
            failure_config=FailureConfig(max_failures=r.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    start = time.monotonic()
    outcome: dict[str, BaseException | None] = {"error": None}

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # Ray wraps worker errors; keep them for the user
            outcome["error"] = exc

    # fit() runs off the main thread so that Ctrl-C reaches our caller as
    # KeyboardInterrupt (Ray Train would otherwise take SIGINT for a slow "graceful
    # abort" that keeps training); the caller then shuts Ray down, which ends the job.
    thread = threading.Thread(target=fit, name="alto-ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=0.5)
    error = outcome["error"]
    if error is not None:
        return RunResult(run_dir, False, _root_message(error), time.monotonic() - start)
    return RunResult(run_dir, True, None, time.monotonic() - start)


def _root_message(exc: BaseException) -> str:
    """The innermost cause's message: what actually went wrong in the worker."""
    seen = exc
    while seen.__cause__ is not None:
        seen = seen.__cause__
    text = str(seen).strip() or type(seen).__name__
    return text if len(text) < 4000 else text[-4000:]
