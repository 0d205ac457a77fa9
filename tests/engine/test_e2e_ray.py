"""End to end on CPU: real Ray Train, real megatron-core, real gloo, 2 workers.

One Ray instance serves the whole module; every job is a tiny MoE GPT of a few
steps on a slice of the stdlib corpus.  The runs are module fixtures so that each
is trained once and looked at by several tests.  An S3-compatible server (moto) on
loopback serves as the cluster's object store: the Ray node gets its credentials in
its own environment, as an operator's nodes would, and the DP=2 kill-and-resume run
keeps its checkpoints and spool there.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path

import pytest
from alto_client import metrics as M
from alto_client.runstorage import ENDPOINT_ENV, REGION_ENV, STORAGE_ENV
from alto_client.spec import JobSpec
from fake_service import FakeService
from moto_s3 import REGION, SECRET_KEY, moto_s3, node_credentials

from engine.launch import FAULT_ENV, RunResult, ensure_ray, launch
from engine.reporting import MetricLog

pytestmark = [pytest.mark.timeout(420), pytest.mark.slow]

STEPS = 6

TINY = {
    "name": "e2e",
    "model": {
        "num_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "ffn_hidden_size": 128,
        "seq_length": 64,
        "num_experts": 4,
        "moe_router_topk": 2,
    },
    "data": {"source": "python-stdlib", "max_bytes": 200_000, "validation_fraction": 0.1},
    "resources": {"workers": 2, "max_failures": 2},
    "training": {
        "steps": STEPS,
        "global_batch_size": 8,
        "micro_batch_size": 2,
        "lr": 3e-3,
        "min_lr": 3e-4,
        "warmup_steps": 1,
        "eval_interval": 3,
        "eval_batches": 1,
        "checkpoint_interval": 0,  # saves cost ~10 s each on 2 cores; only the fault test needs them
    },
    "optimizer": {"name": "alto", "lr": 0.05},  # trust-ratio steps want a larger LR
}


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory):
    with moto_s3(log_path=tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture(scope="module")
def ray_cluster(s3, tmp_path_factory: pytest.TempPathFactory):
    """A local Ray whose node environment holds the object store's credentials (Ray's
    processes inherit this one's at start); no job ever carries them."""
    import ray

    saved = {name: os.environ.get(name) for name in node_credentials()}
    os.environ.update(node_credentials())
    os.environ["ALTO_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    ensure_ray(num_cpus=4)
    yield
    ray.shutdown()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def train(spec: JobSpec, run_dir: Path) -> RunResult:
    result = launch(spec, run_dir, start_ray=False)
    assert result.ok, result.error
    return result


def series(result: RunResult, name: str) -> list[tuple[int, float]]:
    return [(p.step, p.value) for p in MetricLog(result.run_dir).read() if p.name == name]


def losses(result: RunResult) -> list[float]:
    return [v for _, v in series(result, M.TRAIN_LOSS)]


@pytest.fixture(scope="module")
def dp2(ray_cluster, tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    """Data parallel 2 (each rank holds all 4 experts), ALTO."""
    return train(JobSpec.from_dict(TINY), tmp_path_factory.mktemp("dp2"))


def test_dp2_trains_and_logs_every_step_once(dp2: RunResult) -> None:
    points = MetricLog(dp2.run_dir).read()
    per_step = Counter((p.step, p.name) for p in points)
    assert max(per_step.values()) == 1, "a (step, metric) pair was logged twice"
    for name in (
        M.TRAIN_LOSS,
        M.TRAIN_LR,
        M.TRAIN_GRAD_NORM,
        M.TRAIN_TOKENS_PER_S,
        M.TRAIN_AUX_LOSS,
        M.OPTIM_STEP_TIME_S,
    ):
        assert [s for s, _ in series(dp2, name)] == list(range(1, STEPS + 1)), name
    loss = losses(dp2)
    assert all(math.isfinite(v) for v in loss)
    assert loss[-1] < loss[0] - 0.05, loss
    val = series(dp2, M.VAL_LOSS)
    assert [s for s, _ in val] == [3, 6]
    assert series(dp2, M.VAL_PPL)[-1][1] == pytest.approx(math.exp(val[-1][1]))
    # the evaluation's own noise: the spread of its disjoint micro batches (both ranks')
    sem = series(dp2, M.VAL_LOSS_SEM)
    assert [s for s, _ in sem] == [3, 6]
    assert all(0 < v < 0.5 for _, v in sem), sem
    assert series(dp2, M.MODEL_PARAMS)[0][1] > 100_000
    assert series(dp2, M.OPTIM_STATE_BYTES)[0][1] > 0
    assert series(dp2, M.MEM_PEAK_RSS_BYTES)[-1][1] > 0


def test_same_spec_and_seed_give_the_same_losses(
    dp2: RunResult, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The second run also reports to a (fake) service, as the real service would ask."""
    service = FakeService(job_id="job-e2e")
    try:
        spec = JobSpec.from_dict(
            {**TINY, "report": {"url": service.url, "job_id": "job-e2e", "token": "t0k"}}
        )
        again = train(spec, tmp_path_factory.mktemp("dp2-again"))
    finally:
        service.close()
    assert losses(again) == losses(dp2)
    logged = {(p.step, p.name): p.value for p in MetricLog(again.run_dir).read()}
    assert service.points == logged  # every point reached the service before the job ended
    assert set(service.auth) == {"Bearer t0k"}


def test_killed_worker_resumes_from_object_store_checkpoint_with_same_losses(
    dp2: RunResult,
    s3,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Checkpoints and the spool's copy on s3:// (moto on loopback). Rank 1 is SIGKILLed
    after step 4 and rank 0's local spool is deleted with it, as if both workers' node
    were lost; Ray restarts the group from the step-3 checkpoint, downloaded from the
    bucket, and rank 0 rebuilds its spool from the bucket. Losses equal the uninterrupted
    run's, and the (fake) service got every point."""
    monkeypatch.setenv(FAULT_ENV, "4:1:wipe")
    monkeypatch.setenv(STORAGE_ENV, f"s3://{s3.bucket}/e2e")
    monkeypatch.setenv(ENDPOINT_ENV, s3.endpoint_url)
    monkeypatch.setenv(REGION_ENV, REGION)
    run_dir = tmp_path_factory.mktemp("fault")
    service = FakeService(job_id="job-s3")
    try:
        spec = JobSpec.from_dict(
            {
                **TINY,
                "training": {**TINY["training"], "checkpoint_interval": 3},
                "report": {"url": service.url, "job_id": "job-s3", "token": "t0k"},
            }
        )
        result = train(spec, run_dir)
    finally:
        service.close()
    assert (run_dir / ".fault_injected").read_text().startswith("killed rank 1 after step 4")
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [(e["event"], e["step"]) for e in events] == [("resumed", 3)]
    assert events[0]["spool_restored_bytes"] > 0, "the spool was not rebuilt from the bucket"
    steps = [s for s, _ in series(result, M.TRAIN_LOSS)]
    assert steps == list(range(1, STEPS + 1)), "gap or duplicate step after the restart"
    assert losses(result) == pytest.approx(losses(dp2), rel=1e-6, abs=1e-6)
    val, val_straight = series(result, M.VAL_LOSS), series(dp2, M.VAL_LOSS)
    assert [s for s, _ in val] == [s for s, _ in val_straight] == [3, 6]
    assert [v for _, v in val] == pytest.approx([v for _, v in val_straight], rel=1e-6)
    logged = {(p.step, p.name): p.value for p in MetricLog(run_dir).read()}
    assert service.points == logged  # every point reached the service, none lost
    # the checkpoints live in the bucket, under the operator's prefix and the job id
    assert not (run_dir / "ray").exists()
    keys = s3.keys("e2e/job-s3/")
    step_files = [k for k in keys if k.endswith("/alto_step.json")]
    saved = sorted(
        json.loads(s3.client().get_object(Bucket=s3.bucket, Key=k)["Body"].read())["step"]
        for k in step_files
    )
    assert saved == [3, 6], keys  # num_to_keep=2
    assert all(k.startswith("e2e/job-s3/train/checkpoint_") for k in step_files), step_files
    spool = [k for k in keys if "/spool/" in k]
    assert spool == [f"e2e/job-s3/spool/metrics-{s:010d}.jsonl" for s in (3, 6)], spool
    assert all(SECRET_KEY not in json.dumps(e) for e in events)


def test_expert_parallel_2_with_adamw(
    ray_cluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    spec = JobSpec.from_dict(
        {
            **TINY,
            "name": "e2e-ep2",
            "parallel": {"expert": 2},
            "optimizer": {"name": "adamw"},
            "training": TINY["training"],
        }
    )
    result = train(spec, tmp_path_factory.mktemp("ep2"))
    loss = losses(result)
    assert len(loss) == STEPS and loss[-1] < loss[0] - 0.05, loss
    assert [s for s, _ in series(result, M.VAL_LOSS)] == [3, 6]
    assert series(result, M.TRAIN_AUX_LOSS)[-1][1] > 0


@pytest.fixture(scope="module")
def tp2(ray_cluster, tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    """Tensor parallel 2 (sequence parallel on, experts split over the TP ranks), ALTO.

    Not comparable number for number with DP=2: megatron pads the vocabulary to a
    multiple of 128 x TP and the expert weights are drawn per TP shard, so the two
    layouts start from different models (ALTO's TP parity on one model is in
    tests/megatron)."""
    spec = JobSpec.from_dict({**TINY, "name": "e2e-tp2", "parallel": {"tensor": 2}})
    assert spec.sequence_parallel and spec.data_parallel_size == 1
    return train(spec, tmp_path_factory.mktemp("tp2"))


def test_tensor_parallel_2_trains(tp2: RunResult) -> None:
    for name in (M.TRAIN_LOSS, M.TRAIN_GRAD_NORM, M.TRAIN_AUX_LOSS):
        assert [s for s, _ in series(tp2, name)] == list(range(1, STEPS + 1)), name
    loss = losses(tp2)
    assert all(math.isfinite(v) for v in loss)
    assert loss[-1] < loss[0] - 0.05, loss
    assert [s for s, _ in series(tp2, M.VAL_LOSS)] == [3, 6]


def test_tensor_parallel_2_resumes_exactly_after_a_killed_worker(
    tp2: RunResult, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rank 1 (the second TP shard) is SIGKILLed after step 4; the group restarts from the
    step-3 checkpoint, whose ALTO state (moments and carry) is split over the TP ranks."""
    monkeypatch.setenv(FAULT_ENV, "4:1")
    run_dir = tmp_path_factory.mktemp("tp2-fault")
    spec = JobSpec.from_dict(
        {
            **TINY,
            "name": "e2e-tp2",
            "parallel": {"tensor": 2},
            "training": {**TINY["training"], "checkpoint_interval": 3},
        }
    )
    result = train(spec, run_dir)
    assert (run_dir / ".fault_injected").read_text().startswith("killed rank 1 after step 4")
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [(e["event"], e["step"]) for e in events] == [("resumed", 3)]
    assert [s for s, _ in series(result, M.TRAIN_LOSS)] == list(range(1, STEPS + 1))
    assert losses(result) == pytest.approx(losses(tp2), rel=1e-6, abs=1e-6)


PP2 = {
    **TINY,
    "name": "e2e-pp2",
    "parallel": {"pipeline": 2},  # one layer per stage, DP=1
    "training": {**TINY["training"], "checkpoint_interval": 3},
}


@pytest.fixture(scope="module")
def pp2(ray_cluster, tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    """Pipeline parallel 2 (rank 0: embedding + layer 0, rank 1: layer 1 + tied output
    layer), megatron's 1F1B schedule over 4 micro batches, ALTO; checkpoints at 3 and 6."""
    spec = JobSpec.from_dict(PP2)
    assert spec.data_parallel_size == 1 and spec.grad_accumulation_steps == 4
    return train(spec, tmp_path_factory.mktemp("pp2"))


def test_pipeline_parallel_2_trains_and_reports_from_the_last_stage(pp2: RunResult) -> None:
    """Rank 0 (the first stage, which holds no loss) logs the last stage's losses."""
    points = MetricLog(pp2.run_dir).read()
    assert max(Counter((p.step, p.name) for p in points).values()) == 1
    for name in (M.TRAIN_LOSS, M.TRAIN_GRAD_NORM, M.TRAIN_AUX_LOSS, M.TRAIN_LR):
        assert [s for s, _ in series(pp2, name)] == list(range(1, STEPS + 1)), name
    loss = losses(pp2)
    assert all(math.isfinite(v) for v in loss)
    assert loss[0] > 4.0, loss  # ~ln(vocabulary): a real loss, not the first stage's zero
    assert loss[-1] < loss[0] - 0.05, loss
    val = series(pp2, M.VAL_LOSS)
    assert [s for s, _ in val] == [3, 6], val
    assert all(math.isfinite(v) and v < loss[0] for _, v in val), val
    assert series(pp2, M.TRAIN_AUX_LOSS)[-1][1] > 0
    assert series(pp2, M.MODEL_PARAMS)[0][1] > 100_000


def test_pipeline_parallel_2_counts_the_same_parameters_as_dp2(
    pp2: RunResult, dp2: RunResult
) -> None:
    """Both stages' parameters, the tied output layer's copy counted once."""
    assert series(pp2, M.MODEL_PARAMS) == series(dp2, M.MODEL_PARAMS)


def test_pipeline_parallel_2_resumes_exactly_after_a_killed_worker(
    pp2: RunResult, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rank 1 (the last stage) is SIGKILLed after step 4; the group restarts from the
    step-3 checkpoint, each stage loading its own layers and ALTO state."""
    monkeypatch.setenv(FAULT_ENV, "4:1")
    run_dir = tmp_path_factory.mktemp("pp2-fault")
    result = train(JobSpec.from_dict(PP2), run_dir)
    assert (run_dir / ".fault_injected").read_text().startswith("killed rank 1 after step 4")
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [(e["event"], e["step"]) for e in events] == [("resumed", 3)]
    assert [s for s, _ in series(result, M.TRAIN_LOSS)] == list(range(1, STEPS + 1))
    assert losses(result) == pytest.approx(losses(pp2), rel=1e-6, abs=1e-6)
    val, val_straight = series(result, M.VAL_LOSS), series(pp2, M.VAL_LOSS)
    assert [s for s, _ in val] == [s for s, _ in val_straight] == [3, 6]
    assert [v for _, v in val] == pytest.approx([v for _, v in val_straight], rel=1e-6)
