"""The sections of a job spec other than the optimizer: model, data, parallel layout,
resources, training schedule, and the report address the service fills in."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from alto_client.spec.base import StrictModel


class TokenizerSpec(StrictModel):
    """How text becomes token ids.

    ``byte``: one token per UTF-8 byte plus end-of-document (vocabulary 257).
    ``bpe``: a byte-level BPE trained locally with ``tokenizers`` on the
    job's training split and cached by content hash (no downloads).
    ``external``: the data is an indexed dataset tokenized elsewhere (e.g. by
    Megatron-LM's preprocessing); only its vocabulary size is known.
    """

    kind: Literal["byte", "bpe", "external"] = "byte"
    vocab_size: int | None = Field(default=None, ge=2)
    eod_id: int | None = Field(
        default=None, ge=0, description="end-of-document id (external only; default vocab_size-1)"
    )
    sample_bytes: int | None = Field(
        default=None,
        ge=1000,
        le=1 << 40,
        description="bpe only: train the BPE on a deterministic sample of this many bytes "
        "of the training split, spread over the whole corpus (default 256 MB)",
    )


class BlendComponent(StrictModel):
    """One corpus of a blend: text/JSONL ``files`` (as in ``data.files``) or the
    ``path`` prefix of an indexed dataset, drawn from with relative ``weight``."""

    files: list[str] = Field(default_factory=list)
    path: str | None = None
    weight: float = Field(gt=0.0, allow_inf_nan=False)


class DataSpec(StrictModel):
    """Where the tokens come from.

    ``python-stdlib``: the Python standard library's own ``.py`` files on the
    machine running the job, split into train/validation by file.
    ``indexed``: the path prefix of an existing Megatron indexed dataset
    (``PREFIX.bin`` + ``PREFIX.idx``).
    ``files``: text (``.txt``, one document per file) or JSONL (one document
    per line, text under ``jsonl_key``) files; an entry may be a glob
    (``/data/corpora/web/*.jsonl``, ``**`` included) or a directory written with a
    trailing ``/`` (every .txt/.jsonl file below it).  Split by document name.
    ``blend``: several corpora (``files``) or indexed datasets (``path``), each
    with a weight; megatron draws training and validation samples in those
    proportions.
    """

    source: Literal["python-stdlib", "indexed", "files", "blend"] = "python-stdlib"
    path: str | None = None
    files: list[str] = Field(default_factory=list)
    blend: list[BlendComponent] = Field(default_factory=list)
    prep_workers: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="parallel preparation tasks (one CPU each); default: the cluster's CPUs",
    )
    jsonl_key: str = Field(default="text", min_length=1)
    validation_fraction: float = Field(default=0.05, gt=0.0, lt=1.0)
    max_bytes: int | None = Field(
        default=None, ge=1, description="cap on corpus bytes read (python-stdlib/files)"
    )
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec)

    @model_validator(mode="before")
    @classmethod
    def _no_cache_dir(cls, data: Any) -> Any:
        # the cache is the machine's (ALTO_CACHE_DIR), not the spec's: megatron loads
        # the index files cached there with pickle allowed
        if isinstance(data, dict) and "cache_dir" in data:
            raise PydanticCustomError(
                "spec_invalid",
                "{message}",
                {
                    "message": "data.cache_dir is not a spec field: the cache location is "
                    "a setting of the machine that runs the job (ALTO_CACHE_DIR)"
                },
            )
        return data


class ModelSpec(StrictModel):
    """A megatron-core GPT; ``num_experts: 0`` is a dense model, otherwise MoE."""

    num_layers: int = Field(default=2, ge=1)
    hidden_size: int = Field(default=128, ge=1)
    num_attention_heads: int = Field(default=4, ge=1)
    ffn_hidden_size: int | None = Field(default=None, ge=1, description="default 4*hidden_size")
    seq_length: int = Field(default=128, ge=2)
    num_experts: int = Field(default=0, ge=0)
    moe_router_topk: int = Field(default=2, ge=1)
    moe_ffn_hidden_size: int | None = Field(
        default=None, ge=1, description="per-expert FFN size; default ffn_hidden_size"
    )
    moe_aux_loss_coeff: float = Field(default=1e-2, ge=0.0)
    moe_token_dispatcher: Literal["allgather", "alltoall"] = "alltoall"

    @property
    def ffn_size(self) -> int:
        """The FFN size with its default filled in."""
        return self.ffn_hidden_size if self.ffn_hidden_size is not None else 4 * self.hidden_size

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0


class ParallelSpec(StrictModel):
    """Model-parallel sizes; data parallelism is what the workers leave over."""

    tensor: int = Field(default=1, ge=1)
    expert: int = Field(default=1, ge=1)
    pipeline: int = Field(default=1, ge=1)
    sequence_parallel: bool | None = Field(default=None, description="default: on when tensor > 1")


class ResourcesSpec(StrictModel):
    """How many Ray Train workers, on what, and how many restarts a failure may cost."""

    workers: int = Field(default=1, ge=1, le=4096)
    device: Literal["cpu", "gpu"] = "cpu"
    cpus_per_worker: float = Field(
        default=1.0,
        ge=0.25,
        le=1024,
        description="CPUs each worker reserves: at least a quarter, or a cluster's CPUs "
        "split into slivers admit more workers than it can run",
    )
    max_failures: int = Field(
        default=1, ge=0, description="worker-group restarts Ray Train may do before giving up"
    )


class TrainingSpec(StrictModel):
    """Batch, schedule and bookkeeping.  Batches count sequences, not tokens."""

    steps: int = Field(default=100, ge=1)
    global_batch_size: int = Field(default=8, ge=1)
    micro_batch_size: int = Field(default=4, ge=1)
    lr: float = Field(default=1e-3, gt=0.0)
    min_lr: float = Field(default=0.0, ge=0.0)
    warmup_steps: int = Field(default=0, ge=0)
    lr_decay_style: Literal["cosine", "linear", "constant"] = "cosine"
    lr_decay_steps: int | None = Field(default=None, ge=1, description="default: steps")
    grad_clip: float = Field(default=1.0, ge=0.0, description="global-norm clip; 0 = off")
    seed: int = Field(default=1234, ge=0)
    eval_interval: int = Field(default=0, ge=0, description="0 = only at the end")
    eval_batches: int = Field(default=2, ge=0)
    checkpoint_interval: int = Field(default=0, ge=0, description="0 = no checkpoints")
    precision: Literal["fp32", "bf16"] = "fp32"


class ReportSpec(StrictModel):
    """Where the engine posts metrics; the service fills this in before launching."""

    url: str = Field(min_length=1)
    job_id: str = Field(min_length=1)
    token: str = Field(min_length=1, repr=False)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise PydanticCustomError(
                "spec_invalid",
                "{message}",
                {"message": f"must be an http(s) URL like http://127.0.0.1:8000, got {value!r}"},
            )
        return value.rstrip("/")
