"""The job spec: the one schema that service, engine and client share.

Split by concern: `sections` (model, data, layout, resources, schedule, report),
`optimizers` (ALTO, AdamW, E), `rules` (what spans fields), `problems` (how a bad
field is reported), `job` (the spec, what it derives, reading JSON/YAML) and
`overrides` (``--set``, one rule everywhere).

A spec is data, not code: it is validated here, once, without touching the
filesystem, so that the service can reject a bad job before it queues it and
the engine can reject it before any worker starts.  Every problem is reported
with its field path (``training.micro_batch_size``), so a user fixes them all
in one go instead of one per submission.

Checks that need the machine that runs the job (does the data path exist?)
belong to the engine's pre-flight check, not here.
"""

from __future__ import annotations

from alto_client.spec.base import BYTE_VOCAB_SIZE, LARGE_BATCH_THRESHOLD
from alto_client.spec.job import JobSpec
from alto_client.spec.optimizers import (
    E_BASE_HYPERPARAMETERS,
    SHARDED_E_BASES,
    SHARDED_E_HYPERPARAMETERS,
    AdamWSpec,
    AltoSpec,
    ESpec,
    OptimizerSpec,
    alto_paper_defaults,
    base_hyperparameter_problems,
)
from alto_client.spec.overrides import apply_overrides, parse_override, parse_overrides
from alto_client.spec.problems import SpecError, SpecProblem, problems_from_validation_error
from alto_client.spec.sections import (
    BlendComponent,
    DataSpec,
    ModelSpec,
    ParallelSpec,
    ReportSpec,
    ResourcesSpec,
    TokenizerSpec,
    TrainingSpec,
)

__all__ = [
    "BYTE_VOCAB_SIZE",
    "E_BASE_HYPERPARAMETERS",
    "LARGE_BATCH_THRESHOLD",
    "SHARDED_E_BASES",
    "SHARDED_E_HYPERPARAMETERS",
    "AdamWSpec",
    "AltoSpec",
    "BlendComponent",
    "DataSpec",
    "ESpec",
    "JobSpec",
    "ModelSpec",
    "OptimizerSpec",
    "ParallelSpec",
    "ReportSpec",
    "ResourcesSpec",
    "SpecError",
    "SpecProblem",
    "TokenizerSpec",
    "TrainingSpec",
    "alto_paper_defaults",
    "apply_overrides",
    "base_hyperparameter_problems",
    "parse_override",
    "parse_overrides",
    "problems_from_validation_error",
]
