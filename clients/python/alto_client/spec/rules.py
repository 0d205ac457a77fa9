"""Rules that span fields of a spec, checked after each section parsed on its own;
every broken rule is reported at its field, all at once."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic_core import InitErrorDetails

from alto_client.spec.base import BYTE_VOCAB_SIZE
from alto_client.spec.optimizers import (
    SHARDED_E_HYPERPARAMETERS,
    AltoSpec,
    ESpec,
    alto_paper_defaults,
)
from alto_client.spec.problems import problem
from alto_client.spec.sections import DataSpec

if TYPE_CHECKING:
    from alto_client.spec.job import JobSpec


def cross_field_problems(spec: JobSpec) -> list[InitErrorDetails]:
    """Every rule that spans fields (model shape, parallel layout, batch arithmetic,
    data, optimizer bounds), each broken one located at its field."""
    out: list[InitErrorDetails] = []
    m, p, r, t, d = spec.model, spec.parallel, spec.resources, spec.training, spec.data
    tp, ep, pp = p.tensor, p.expert, p.pipeline

    # model shape
    if m.hidden_size % m.num_attention_heads:
        out.append(
            problem(
                ("model", "hidden_size"),
                f"hidden_size {m.hidden_size} must be divisible by "
                f"num_attention_heads {m.num_attention_heads}",
                m.hidden_size,
            )
        )
    if m.is_moe and m.moe_router_topk > m.num_experts:
        out.append(
            problem(
                ("model", "moe_router_topk"),
                f"moe_router_topk {m.moe_router_topk} must be at most num_experts {m.num_experts}",
                m.moe_router_topk,
            )
        )

    # parallel layout
    if m.num_layers % pp:
        out.append(
            problem(
                ("model", "num_layers"),
                f"num_layers {m.num_layers} must be divisible by parallel.pipeline {pp} "
                "(each pipeline stage holds num_layers/pipeline layers)",
                m.num_layers,
            )
        )
    if m.num_attention_heads % tp:
        out.append(
            problem(
                ("model", "num_attention_heads"),
                f"num_attention_heads {m.num_attention_heads} must be divisible by "
                f"parallel.tensor {tp}",
                m.num_attention_heads,
            )
        )
    if m.ffn_size % tp:
        out.append(
            problem(
                ("model", "ffn_hidden_size"),
                f"ffn_hidden_size {m.ffn_size} must be divisible by parallel.tensor {tp}",
                m.ffn_size,
            )
        )
    if m.is_moe and m.moe_ffn_hidden_size is not None and m.moe_ffn_hidden_size % tp:
        out.append(
            problem(
                ("model", "moe_ffn_hidden_size"),
                f"moe_ffn_hidden_size {m.moe_ffn_hidden_size} must be divisible by "
                f"parallel.tensor {tp}",
                m.moe_ffn_hidden_size,
            )
        )
    if ep > 1 and not m.is_moe:
        out.append(
            problem(
                ("parallel", "expert"),
                f"expert parallelism {ep} needs an MoE model, but model.num_experts is 0",
                ep,
            )
        )
    elif m.is_moe and m.num_experts % ep:
        out.append(
            problem(
                ("model", "num_experts"),
                f"num_experts {m.num_experts} must be divisible by parallel.expert {ep}",
                m.num_experts,
            )
        )
    if r.workers % (tp * ep * pp):
        out.append(
            problem(
                ("resources", "workers"),
                f"workers {r.workers} must be a multiple of tensor*expert*pipeline = "
                f"{tp}*{ep}*{pp} = {tp * ep * pp}",
                r.workers,
            )
        )
    if tp > 1 and m.is_moe and p.sequence_parallel is False:
        out.append(
            problem(
                ("parallel", "sequence_parallel"),
                "an MoE model with parallel.tensor > 1 needs sequence_parallel (true or unset)",
                False,
            )
        )
    if tp > 1 and spec.sequence_parallel and m.seq_length % tp:
        out.append(
            problem(
                ("model", "seq_length"),
                f"seq_length {m.seq_length} must be divisible by parallel.tensor {tp} "
                "with sequence parallelism",
                m.seq_length,
            )
        )

    # batch
    dp = max(1, r.workers // (tp * pp)) if r.workers % (tp * pp) == 0 else None
    if t.global_batch_size % t.micro_batch_size:
        out.append(
            problem(
                ("training", "micro_batch_size"),
                f"micro_batch_size {t.micro_batch_size} must divide "
                f"global_batch_size {t.global_batch_size}",
                t.micro_batch_size,
            )
        )
    elif dp is not None and t.global_batch_size % (t.micro_batch_size * dp):
        out.append(
            problem(
                ("training", "global_batch_size"),
                f"global_batch_size {t.global_batch_size} must be a multiple of "
                f"micro_batch_size*data_parallel = {t.micro_batch_size}*{dp} = "
                f"{t.micro_batch_size * dp} (data_parallel = workers/(tensor*pipeline))",
                t.global_batch_size,
            )
        )

    # schedule
    if t.min_lr > t.lr:
        out.append(
            problem(
                ("training", "min_lr"),
                f"min_lr {t.min_lr} must not exceed lr {t.lr}",
                t.min_lr,
            )
        )
    decay = t.lr_decay_steps if t.lr_decay_steps is not None else t.steps
    if t.warmup_steps >= decay and t.lr_decay_style != "constant":
        out.append(
            problem(
                ("training", "warmup_steps"),
                f"warmup_steps {t.warmup_steps} must be smaller than the decay length "
                f"{decay} (training.lr_decay_steps, default training.steps)",
                t.warmup_steps,
            )
        )
    if t.eval_interval > 0 and t.eval_batches == 0:
        out.append(
            problem(
                ("training", "eval_batches"),
                "eval_batches must be at least 1 when eval_interval > 0",
                t.eval_batches,
            )
        )
    if t.precision == "bf16" and isinstance(spec.optimizer, ESpec) and not spec.optimizer.sharded:
        out.append(
            problem(
                ("training", "precision"),
                f"optimizer 'e' with base {spec.optimizer.base!r} and base_hyperparameters "
                f"{sorted(spec.optimizer.base_hyperparameters)} runs in fp32 only; use "
                "precision fp32, or base 'adam'/'adamw' configured only by "
                f"{', '.join(SHARDED_E_HYPERPARAMETERS)} (which runs sharded, in bf16 too)",
                t.precision,
            )
        )

    # data
    out.extend(data_problems(d))

    # optimizer
    opt = spec.optimizer
    if isinstance(opt, AltoSpec | ESpec):
        alpha_d, beta1_d = alto_paper_defaults(t.global_batch_size)
        alpha = opt.alpha if opt.alpha is not None else alpha_d
        beta1 = opt.beta1 if opt.beta1 is not None else beta1_d
        bound = 1.0 / (1.0 - beta1)
        if not abs(alpha) < bound:
            out.append(
                problem(
                    ("optimizer", "alpha"),
                    f"|alpha| must be < 1/(1-beta1) = {bound:g} for beta1 {beta1:g}, "
                    f"got alpha {alpha:g}",
                    alpha,
                )
            )
        if not math.isfinite(alpha):
            out.append(problem(("optimizer", "alpha"), "alpha must be finite", alpha))
    return out


CORPUS_SUFFIXES = (".txt", ".jsonl", ".json")


def _file_entry_problem(entry: str) -> str | None:
    """Why a `files` entry is not a .txt/.jsonl file, a glob of them or a directory/."""
    if entry.endswith("/") or entry.endswith(CORPUS_SUFFIXES):
        return None
    return (
        f"{entry!r}: only .txt and .jsonl files, globs of them (/data/corpus/*.jsonl) "
        "or directories written with a trailing '/' are supported"
    )


def data_problems(d: DataSpec) -> list[InitErrorDetails]:
    """The data section's own cross-field rules (source, paths, tokenizer)."""
    out: list[InitErrorDetails] = []
    tok = d.tokenizer
    blend_paths = [c for c in d.blend if c.path is not None and not c.files]
    blend_files = [c for c in d.blend if c.files and c.path is None]
    pretokenized = d.source == "indexed" or (d.source == "blend" and bool(blend_paths))
    if d.source != "blend" and d.blend:
        out.append(problem(("data", "blend"), "blend is only for source 'blend'", len(d.blend)))
    if d.source == "indexed":
        if tok.kind == "bpe":
            out.append(
                problem(
                    ("data", "tokenizer", "kind"),
                    "source 'indexed' is pre-tokenized: use tokenizer 'external' (with "
                    "its vocab_size) or 'byte' for byte-level data, not 'bpe'",
                    tok.kind,
                )
            )
        if not d.path:
            out.append(
                problem(
                    ("data", "path"),
                    "source 'indexed' needs path: the prefix of PREFIX.bin/PREFIX.idx",
                    d.path,
                )
            )
        if d.files:
            out.append(problem(("data", "files"), "files is only for source 'files'", d.files))
    elif d.source == "files":
        if not d.files:
            out.append(
                problem(
                    ("data", "files"),
                    "source 'files' needs at least one .txt or .jsonl file, glob or directory/",
                    d.files,
                )
            )
        for i, f in enumerate(d.files):
            why = _file_entry_problem(f)
            if why:
                out.append(problem(("data", "files", i), why, f))
        if d.path:
            out.append(problem(("data", "path"), "path is only for source 'indexed'", d.path))
    elif d.source == "blend":
        if not d.blend:
            out.append(
                problem(
                    ("data", "blend"),
                    "source 'blend' needs at least one component: {files: [...], weight: W} "
                    "or {path: PREFIX, weight: W}",
                    d.blend,
                )
            )
        for i, c in enumerate(d.blend):
            if bool(c.files) == (c.path is not None):
                out.append(
                    problem(
                        ("data", "blend", i),
                        "a blend component names either files (a corpus to tokenize) or "
                        "path (an indexed dataset prefix), exactly one of them",
                        {"files": c.files, "path": c.path},
                    )
                )
            for j, f in enumerate(c.files):
                why = _file_entry_problem(f)
                if why:
                    out.append(problem(("data", "blend", i, "files", j), why, f))
            if c.path is not None and not c.path.strip():
                out.append(problem(("data", "blend", i, "path"), "path must not be empty", c.path))
        if blend_paths and blend_files:
            out.append(
                problem(
                    ("data", "blend"),
                    "a blend is either all corpora (files) or all indexed datasets (path): "
                    "a corpus gets its held-out split by document, an indexed dataset by "
                    "data.validation_fraction of its documents, and megatron cannot mix the two",
                    len(d.blend),
                )
            )
        if blend_paths and tok.kind == "bpe":
            out.append(
                problem(
                    ("data", "tokenizer", "kind"),
                    "a blend of indexed datasets is pre-tokenized: use tokenizer 'external' "
                    "(with its vocab_size) or 'byte', not 'bpe'",
                    tok.kind,
                )
            )
        for name, value in (("path", d.path), ("files", d.files)):
            if value:
                out.append(
                    problem(
                        ("data", name),
                        f"source 'blend' names its data in data.blend, not data.{name}",
                        value,
                    )
                )
    else:
        if d.path:
            out.append(problem(("data", "path"), "path is only for source 'indexed'", d.path))
        if d.files:
            out.append(problem(("data", "files"), "files is only for source 'files'", d.files))
    if tok.sample_bytes is not None and tok.kind != "bpe":
        out.append(
            problem(
                ("data", "tokenizer", "sample_bytes"),
                f"sample_bytes sizes the BPE's training sample; tokenizer {tok.kind!r} "
                "trains nothing, leave it out",
                tok.sample_bytes,
            )
        )
    if d.prep_workers is not None and pretokenized:
        out.append(
            problem(
                ("data", "prep_workers"),
                "prep_workers sizes the tokenization of corpora; pre-tokenized indexed "
                "data needs none, leave it out",
                d.prep_workers,
            )
        )

    if tok.kind == "byte" and tok.vocab_size not in (None, BYTE_VOCAB_SIZE):
        out.append(
            problem(
                ("data", "tokenizer", "vocab_size"),
                f"the byte tokenizer's vocabulary is fixed at {BYTE_VOCAB_SIZE}; "
                "leave vocab_size out",
                tok.vocab_size,
            )
        )
    if tok.kind == "bpe" and (tok.vocab_size is None or tok.vocab_size < BYTE_VOCAB_SIZE + 1):
        out.append(
            problem(
                ("data", "tokenizer", "vocab_size"),
                f"the bpe tokenizer needs vocab_size > {BYTE_VOCAB_SIZE} "
                "(its 256 byte symbols, end-of-document and the merges)",
                tok.vocab_size,
            )
        )
    if tok.kind == "external":
        if not pretokenized:
            out.append(
                problem(
                    ("data", "tokenizer", "kind"),
                    "tokenizer 'external' is only for source 'indexed' or a blend of "
                    "indexed datasets (pre-tokenized data)",
                    tok.kind,
                )
            )
        if tok.vocab_size is None:
            out.append(
                problem(
                    ("data", "tokenizer", "vocab_size"),
                    "tokenizer 'external' needs vocab_size (the vocabulary the data was "
                    "tokenized with)",
                    None,
                )
            )
        elif tok.eod_id is not None and tok.eod_id >= tok.vocab_size:
            out.append(
                problem(
                    ("data", "tokenizer", "eod_id"),
                    f"eod_id {tok.eod_id} must be below vocab_size {tok.vocab_size}",
                    tok.eod_id,
                )
            )
    elif tok.eod_id is not None:
        out.append(
            problem(
                ("data", "tokenizer", "eod_id"),
                f"eod_id is only for tokenizer 'external'; {tok.kind!r} fixes its own",
                tok.eod_id,
            )
        )
    return out
