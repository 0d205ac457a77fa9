"""The worker's Trainer without Ray (one gloo process): the E optimizer trains and resumes,
unsharded around SGD and inside the DistributedOptimizer (bf16) around AdamW."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from alto_client.spec import JobSpec

HERE = Path(__file__).resolve().parent


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("optimizer", "precision", "sharded"),
    [
        ({"name": "e", "base": "sgd", "base_hyperparameters": {"momentum": 0.9}}, "fp32", False),
        (
            {"name": "e", "base": "adamw", "base_hyperparameters": {"betas": [0.9, 0.95]}},
            "bf16",
            True,
        ),
    ],
    ids=["sgd-unsharded-fp32", "adamw-distributed-bf16"],
)
def test_e_trains_and_resumes_exactly(
    cache_dir: Path, optimizer: dict, precision: str, sharded: bool
) -> None:
    spec = JobSpec.from_dict(
        {
            "model": {
                "num_layers": 1,
                "hidden_size": 32,
                "num_attention_heads": 2,
                "seq_length": 32,
                "num_experts": 2,
                "moe_router_topk": 1,
            },
            "data": {"max_bytes": 100_000},
            "training": {
                "steps": 4,
                "global_batch_size": 4,
                "micro_batch_size": 2,
                "lr": 0.05 if not sharded else 3e-3,
                "eval_batches": 1,
                "precision": precision,
            },
            "optimizer": optimizer,
        }
    )
    assert spec.optimizer.sharded is sharded
    proc = subprocess.run(
        [sys.executable, str(HERE / "local_trainer_script.py"), spec.model_dump_json()],
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[0][len("RESULT ") :])
    straight, resumed = result["straight"], result["resumed"]
    assert result["inner"] == ["E"]
    expected = "EDistributedOptimizer" if sharded else "FP32Optimizer"
    assert expected in result["wrappers"], result["wrappers"]
    assert result["start"] == 2
    assert resumed == straight[2:]
    assert straight[-1] < straight[0]
