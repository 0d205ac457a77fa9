"""Run the engine's Trainer in one process (gloo, world size 1), without Ray.

Used by test_trainer_local.py as a subprocess: trains, checkpoints at step 2,
reloads into a fresh Trainer and prints the losses of both paths as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path


def main(spec_json: str) -> None:
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29561")
    dist.init_process_group("gloo", rank=0, world_size=1)
    from alto_client.spec import JobSpec

    from engine.worker.checkpoint import load_checkpoint, save_checkpoint
    from engine.worker.loop import Trainer, init_megatron

    spec = JobSpec.model_validate_json(spec_json)
    with tempfile.TemporaryDirectory() as tmp:
        init_megatron(spec)
        trainer = Trainer(spec, Path(tmp))
        straight = []
        for step in range(1, spec.training.steps + 1):
            straight.append(trainer.train_step(step).loss)
            if step == 2:
                save_checkpoint(
                    Path(tmp) / "ckpt", trainer.model, trainer.optimizer, trainer.scheduler, step
                )
        init_megatron(spec)
        again = Trainer(spec, Path(tmp))
        start = load_checkpoint(Path(tmp) / "ckpt", again.model, again.optimizer, again.scheduler)
        resumed = [again.train_step(s).loss for s in range(start + 1, spec.training.steps + 1)]
        leaves = getattr(again.optimizer, "chained_optimizers", [again.optimizer])
        wrappers = sorted({type(w).__name__ for w in leaves})
        inner = sorted({type(w.optimizer).__name__ for w in leaves})
    print(
        "RESULT "
        + json.dumps(
            {
                "straight": straight,
                "resumed": resumed,
                "start": start,
                "wrappers": wrappers,
                "inner": inner,
            }
        )
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
