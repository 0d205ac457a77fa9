"""The training loop each Ray Train worker runs: megatron init, model, data, steps, metrics.

Entry point: :func:`train_loop` (Ray Train's ``train_loop_per_worker``).  Its
config is plain JSON-able data (the spec as JSON, the run directory, an optional
fault-injection hook for tests), so it crosses process and machine boundaries.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import signal
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from alto_client import metrics as M
from alto_client.spec import JobSpec

from engine.data.prepare import prepare_data
from engine.reporting import OFFSET_FILE, MetricLog, ServiceReporter, points_at
from engine.storage import ObjectSpool, last_step, read_spool_state, write_spool_state
from engine.worker.checkpoint import load_checkpoint, save_checkpoint
from engine.worker.data import build_datasets, micro_batches
from engine.worker.model import build_model, count_parameters, wrap_ddp
from engine.worker.optim import (
    build_optimizer,
    build_scheduler,
    optimizer_state_bytes,
    uses_distributed_optimizer,
)

log = logging.getLogger(__name__)


@dataclass
class StepResult:
    loss: float
    aux_loss: float | None
    grad_norm: float | None
    lr: float
    step_time_s: float
    optim_time_s: float


def init_megatron(spec: JobSpec) -> None:
    """megatron's process groups on top of the process group Ray Train created."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import random as tp_random

    from alto.megatron import groups

    if spec.resources.device == "cpu":
        from alto.megatron import cpu_compat

        cpu_compat.enable()
    else:
        import alto.megatron  # noqa: F401 - applies megatron's TE-less fixes

        torch.cuda.set_device(torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))))
    # tears down, whole, the groups of any earlier initialisation in this process
    groups.initialize_model_parallel(
        tensor_model_parallel_size=spec.parallel.tensor,
        pipeline_model_parallel_size=spec.parallel.pipeline,
        expert_model_parallel_size=spec.parallel.expert,
        expert_tensor_parallel_size=spec.parallel.tensor if spec.model.is_moe else None,
    )
    # Megatron-LM's rule: each pipeline stage draws its layers from its own seed (else
    # stage 1's first layer would start as a copy of stage 0's); PP=1 keeps the seed
    seed = spec.training.seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    torch.manual_seed(seed)
    tp_random.model_parallel_cuda_manual_seed(seed)


class Trainer:
    """One worker's view of the job: owns model, optimizer, data and the step loop.

    With pipeline parallelism each worker holds one stage; megatron's schedule
    (``get_forward_backward_func``: 1F1B without interleaving) runs the micro batches
    through the stages, and the losses, known on the last stage, are summed over the
    pipeline group so that every rank (rank 0 reports) holds them.
    """

    def __init__(self, spec: JobSpec, run_dir: Path) -> None:
        from megatron.core import parallel_state as ps
        from megatron.core.distributed import finalize_model_grads
        from megatron.core.pipeline_parallel import get_forward_backward_func

        self.spec = spec
        self.run_dir = run_dir
        self.rank = torch.distributed.get_rank()
        self.dp_rank = ps.get_data_parallel_rank()
        self.dp_size = ps.get_data_parallel_world_size()
        self.last_micro_losses: list[float] = []
        self.dp_group = ps.get_data_parallel_group()
        self.pp_group = ps.get_pipeline_model_parallel_group()
        self.pipeline = ps.get_pipeline_model_parallel_world_size()
        self.device = (
            torch.device("cuda") if spec.resources.device == "gpu" else torch.device("cpu")
        )

        self.prepared = prepare_data(spec)
        self.datasets = build_datasets(spec, self.prepared)
        model = build_model(spec, self.prepared.vocab_size)
        if self.device.type == "cuda":
            model = model.cuda()
        self.model = wrap_ddp(model, uses_distributed_optimizer(spec))
        self.optimizer = build_optimizer(spec, self.model)
        self.scheduler = build_scheduler(spec, self.optimizer)
        self.scheduler.step(increment=1)  # step 1 already uses the first warmup LR
        cfg = model.config
        cfg.finalize_model_grads_func = finalize_model_grads
        cfg.no_sync_func = self.model.no_sync
        cfg.grad_scale_func = self.optimizer.scale_loss
        self.forward_backward = get_forward_backward_func()
        self.num_params = count_parameters(model)

    # ---- one step

    def _forward_step(self, data_iterator, model):
        batch = next(data_iterator)
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
        loss_mask = batch["loss_mask"].float()

        def loss_func(per_token: torch.Tensor):
            loss_sum = (per_token.float().view(-1) * loss_mask.view(-1)).sum()
            tokens = loss_mask.sum().to(torch.int)
            report = torch.stack([loss_sum.detach(), loss_mask.sum()])
            return loss_sum, tokens, {"lm": report}

        return output, loss_func

    def _run(self, dataset, first_sample: int, global_batch: int, forward_only: bool) -> float:
        """The token-mean loss of one global batch (forward and backward unless
        `forward_only`); each micro batch's own mean is kept in `self.last_micro_losses`."""
        t = self.spec.training
        num_micro = global_batch // (t.micro_batch_size * self.dp_size)
        batches = micro_batches(
            dataset, first_sample, global_batch, t.micro_batch_size, self.dp_rank, self.dp_size
        )
        outputs = self.forward_backward(
            forward_step_func=self._forward_step,
            data_iterator=batches,
            model=[self.model],
            num_microbatches=num_micro,
            seq_length=self.spec.model.seq_length,
            micro_batch_size=t.micro_batch_size,
            forward_only=forward_only,
        )
        # (loss sum, tokens) of every micro batch of every data-parallel rank: disjoint
        # batches of the same model, so their spread is the evaluation's own noise
        per_micro = torch.zeros(self.dp_size, num_micro, 2, dtype=torch.float64, device=self.device)
        for i, out in enumerate(outputs):  # empty except on the last pipeline stage
            per_micro[self.dp_rank, i] = out["lm"].to(torch.float64)
        torch.distributed.all_reduce(per_micro, group=self.dp_group)
        if self.pipeline > 1:  # every stage (rank 0 writes the metrics) gets the last's
            torch.distributed.all_reduce(per_micro, group=self.pp_group)
        flat = per_micro.reshape(-1, 2)
        self.last_micro_losses = (flat[:, 0] / flat[:, 1].clamp(min=1)).tolist()
        total = flat.sum(dim=0)
        return float(total[0] / total[1].clamp(min=1))

    def _aux_loss(self, num_micro: int) -> float | None:
        """The MoE load-balancing loss (no coefficient), averaged over layers and micro batches."""
        if not self.spec.model.is_moe:
            return None
        from megatron.core.transformer.moe import moe_utils

        tracker = moe_utils.get_moe_layer_wise_logging_tracker()
        if "load_balancing_loss" not in tracker:
            return None
        moe_utils.reduce_aux_losses_tracker_across_ranks(["load_balancing_loss"])
        values = tracker["load_balancing_loss"]["values"]
        value = float(values.sum() / (values.numel() * num_micro))
        moe_utils.clear_aux_losses_tracker()
        return value

    def train_step(self, step: int) -> StepResult:
        t = self.spec.training
        start = time.perf_counter()
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        lr = float(self.optimizer.param_groups[0]["lr"])
        loss = self._run(
            self.datasets.train, (step - 1) * t.global_batch_size, t.global_batch_size, False
        )
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        opt_start = time.perf_counter()
        _, grad_norm, _ = self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        optim_time = time.perf_counter() - opt_start
        self.scheduler.step(increment=1)
        aux = self._aux_loss(self.spec.grad_accumulation_steps)
        return StepResult(
            loss=loss,
            aux_loss=aux,
            grad_norm=None if grad_norm is None else float(grad_norm),
            lr=lr,
            step_time_s=time.perf_counter() - start,
            optim_time_s=optim_time,
        )

    @torch.no_grad()
    def evaluate(self) -> float | None:
        if self.datasets.valid is None:
            return None
        t = self.spec.training
        was_training = self.model.training
        self.model.eval()
        try:
            loss = self._run(
                self.datasets.valid, 0, max(1, t.eval_batches) * t.global_batch_size, True
            )
        finally:
            self.model.train(was_training)
        if self.spec.model.is_moe:
            from megatron.core.transformer.moe import moe_utils

            moe_utils.clear_aux_losses_tracker()
        return loss

    def memory_metrics(self) -> dict[str, float | None]:
        if self.device.type == "cuda":
            return {
                M.MEM_PEAK_ALLOCATED_BYTES: float(torch.cuda.max_memory_allocated()),
                M.MEM_PEAK_RESERVED_BYTES: float(torch.cuda.max_memory_reserved()),
                M.MEM_PEAK_RSS_BYTES: _peak_rss(),
            }
        return {M.MEM_PEAK_RSS_BYTES: _peak_rss()}


def standard_error(values: list[float]) -> float | None:
    """Standard error of the mean of `values` (disjoint validation batches of one
    evaluation): None with fewer than two, or when any is not finite."""
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        return None
    return statistics.stdev(values) / math.sqrt(len(values))


def _peak_rss() -> float:
    """Peak resident set size of this process in bytes (Linux reports KiB)."""
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def _should_eval(spec: JobSpec, step: int) -> bool:
    t = spec.training
    if step == t.steps:
        return True
    return t.eval_interval > 0 and step % t.eval_interval == 0


def train_loop(config: dict) -> None:
    """Ray Train's per-worker function: train the spec, resuming from Ray's latest checkpoint."""
    import ray.train

    spec = JobSpec.model_validate_json(config["spec"])
    run_dir = Path(config["run_dir"])
    fault = config.get("fault")
    logging.basicConfig(level=logging.WARNING)

    init_megatron(spec)
    trainer = Trainer(spec, run_dir)
    rank0 = trainer.rank == 0

    start_step = 0
    acked_at_checkpoint = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            start_step = load_checkpoint(
                Path(ckpt_dir), trainer.model, trainer.optimizer, trainer.scheduler
            )
            acked_at_checkpoint = read_spool_state(Path(ckpt_dir))

    metric_log = MetricLog(run_dir) if rank0 else None
    spool = _object_spool(config.get("storage")) if rank0 else None
    reporter = None
    spool_from = 0  # the local spool's bytes already copied to the object store
    if rank0:
        restored = None
        if spool is not None and start_step and last_step(metric_log.path) < start_step:
            # rank 0 runs on a node without the spool (another node, a fresh disk)
            restored = _restore_spool(spool, metric_log, start_step, acked_at_checkpoint)
        metric_log.truncate_after(start_step)
        spool_from = metric_log.path.stat().st_size if metric_log.path.exists() else 0
        if start_step:
            extra = {} if restored is None else {"spool_restored_bytes": restored}
            log_event(run_dir, "resumed", step=start_step, **extra)
        if spec.report is not None:
            reporter = ServiceReporter(spec.report, run_dir).start()

    t = spec.training
    tokens_per_step = spec.tokens_per_step
    try:
        for step in range(start_step + 1, t.steps + 1):
            result = trainer.train_step(step)
            values: dict[str, float | None] = {
                M.TRAIN_LOSS: result.loss,
                M.TRAIN_AUX_LOSS: result.aux_loss,
                M.TRAIN_LR: result.lr,
                M.TRAIN_GRAD_NORM: result.grad_norm,
                M.TRAIN_TOKENS_PER_S: tokens_per_step / result.step_time_s,
                M.TRAIN_STEP_TIME_S: result.step_time_s,
                M.OPTIM_STEP_TIME_S: result.optim_time_s,
            }
            if step == 1:
                values[M.MODEL_PARAMS] = float(trainer.num_params)
                values[M.OPTIM_STATE_BYTES] = float(optimizer_state_bytes(trainer.optimizer))
            if _should_eval(spec, step):
                val = trainer.evaluate()
                if val is not None:
                    values[M.VAL_LOSS] = val
                    values[M.VAL_PPL] = math.exp(min(val, 700.0))
                    values[M.VAL_LOSS_SEM] = standard_error(trainer.last_micro_losses)
                values.update(trainer.memory_metrics())
            if rank0:
                metric_log.write(points_at(step, values))
                if reporter is not None:
                    reporter.poke()

            if t.checkpoint_interval and (step % t.checkpoint_interval == 0 or step == t.steps):
                with tempfile.TemporaryDirectory(prefix="alto-ckpt-") as tmp:
                    ckpt_dir = Path(tmp) / f"step_{step:08d}"
                    save_checkpoint(
                        ckpt_dir, trainer.model, trainer.optimizer, trainer.scheduler, step
                    )
                    if spool is not None:  # before the report: a checkpoint has its spool
                        spool_from = _copy_spool(
                            spool, metric_log, reporter, ckpt_dir, step, spool_from
                        )
                    ray.train.report(
                        {"step": step, "loss": result.loss},
                        checkpoint=ray.train.Checkpoint.from_directory(str(ckpt_dir)),
                    )
            _maybe_inject_fault(fault, step, trainer.rank)
    finally:
        flush_s = float(config.get("report_flush_s", 30.0))
        if reporter is not None and not reporter.close(deadline_s=flush_s):
            log.warning(
                "%d bytes of metrics could not be sent to %s yet; they stay in %s",
                reporter.pending_bytes(),
                spec.report.url,
                metric_log.path,
            )


def _maybe_inject_fault(fault: dict | None, step: int, rank: int) -> None:
    """Test hook: SIGKILL this worker once, after ``fault['step']``, on ``fault['rank']``.

    A marker file makes it fire once per run, so the restarted worker group runs on.
    """
    if not fault or step != fault["step"] or rank != fault.get("rank", 0):
        return
    marker = Path(fault["marker"])
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"killed rank {rank} after step {step}\n")
    # Ray Train's controller collects reports (and so registers checkpoints) on its
    # health-check poll; a kill right after a report would race it, which real
    # failures do not do on purpose.  Wait out two polls so the test is deterministic.
    time.sleep(2.5 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0")))
    for path in fault.get("wipe", ()):  # rank 0's node "lost" with this worker
        Path(path).unlink(missing_ok=True)
    os.kill(os.getpid(), signal.SIGKILL)


def log_event(run_dir: Path, event: str, **fields) -> None:
    """Append a run event (resumed, ...) to ``events.jsonl`` in the run directory."""
    record = {"event": event, "time": time.time(), **fields}
    with (run_dir / "events.jsonl").open("a") as stream:
        stream.write(json.dumps(record) + "\n")


def _object_spool(storage: dict | None) -> ObjectSpool | None:
    """Rank 0's handle on the spool's copy in the run storage (None: local storage)."""
    if not storage:
        return None
    from engine.storage import RunStorageConfig, filesystem

    config = RunStorageConfig(
        bucket=storage["bucket"],
        prefix=storage["prefix"],
        endpoint_url=storage.get("endpoint_url"),
        region=storage.get("region"),
    )
    return ObjectSpool(filesystem(config), storage["job_path"])


def _copy_spool(
    spool: ObjectSpool,
    metric_log: MetricLog,
    reporter: ServiceReporter | None,
    ckpt_dir: Path,
    step: int,
    spool_from: int,
) -> int:
    """Upload the spool's bytes since the last checkpoint as the segment of `step`, and
    record in the checkpoint how much of the spool the service had acknowledged."""
    size = metric_log.path.stat().st_size if metric_log.path.exists() else 0
    with metric_log.path.open("rb") as stream:
        stream.seek(spool_from)
        data = stream.read(size - spool_from)
    spool.save_segment(step, data)
    write_spool_state(ckpt_dir, reporter.acked_offset() if reporter is not None else 0)
    return size


def _restore_spool(spool: ObjectSpool, metric_log: MetricLog, step: int, acked: int | None) -> int:
    """Rebuild the local spool up to `step` from the object store; the reporter resumes
    from the offset the checkpoint recorded (re-sending is harmless, skipping is not)."""
    data = spool.restore(step)
    tmp = metric_log.path.with_suffix(".restore")
    tmp.write_bytes(data)
    tmp.replace(metric_log.path)
    offset_path = metric_log.path.parent / OFFSET_FILE
    offset_path.write_text(str(min(acked or 0, len(data))))
    return len(data)
