"""Checks that need the machine: run on the driver before any Ray worker starts.

The schema (``alto_client.spec``) has already checked everything that needs no
filesystem; here the data is located, validated and, for corpora, tokenized into
the shared cache, so a bad path or a corrupt ``.idx`` is a one-line error at
submission instead of a crash inside a worker minutes later.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from alto_client.spec import JobSpec, SpecError, SpecProblem

from engine.data.prepare import PreparedData, PrepStats, indexed_prefix, prepare_data_with_stats
from engine.data.roots import resolve_in_roots
from engine.data.sources import expand_entry
from engine.errors import DataError

log = logging.getLogger(__name__)

REPEAT_WARN_EPOCHS = 4.0
"""Above this many passes over the training tokens a run measures memorization."""


def _check_files(entries: list[str], field: str, problems: list[SpecProblem]) -> None:
    for i, name in enumerate(entries):
        try:
            expand_entry(name, f"{field}.{i}")
        except DataError as exc:
            problems.extend(exc.problems)


def _check_prefix(path: str, field: str, problems: list[SpecProblem]) -> None:
    try:
        prefix = str(resolve_in_roots(indexed_prefix(path), field))
    except DataError as exc:
        problems.extend(exc.problems)
        return
    for suffix in (".bin", ".idx"):
        if not Path(prefix + suffix).is_file():
            problems.append(
                SpecProblem(
                    field,
                    f"{prefix + suffix} does not exist "
                    "(an indexed dataset needs PREFIX.bin and PREFIX.idx)",
                )
            )


def check_spec_on_machine(spec: JobSpec) -> list[SpecProblem]:
    """Problems with the spec on this machine, without building anything."""
    problems: list[SpecProblem] = []
    d = spec.data
    if d.source == "files":
        _check_files(d.files, "data.files", problems)
    if d.source == "indexed" and d.path:
        _check_prefix(d.path, "data.path", problems)
    if d.source == "blend":
        for i, c in enumerate(d.blend):
            _check_files(c.files, f"data.blend.{i}.files", problems)
            if c.path:
                _check_prefix(c.path, f"data.blend.{i}.path", problems)
    if spec.resources.device == "gpu":
        import torch

        if not torch.cuda.is_available() and not _cluster_has_gpus():
            problems.append(
                SpecProblem(
                    "resources.device",
                    "'gpu' requested but no CUDA device is visible "
                    "here and RAY_ADDRESS names no cluster; use 'cpu'",
                )
            )
    return problems


def _cluster_has_gpus() -> bool:
    return bool(os.environ.get("RAY_ADDRESS"))


def repeat_warning(spec: JobSpec, prepared: PreparedData) -> str | None:
    """A warning when the run's budget passes over its training tokens more than
    REPEAT_WARN_EPOCHS times (per blend component, at its weight's share)."""
    t = spec.training
    consumed = t.steps * t.global_batch_size * spec.model.seq_length
    if prepared.blend:
        total_w = sum(float(c["weight"]) for c in prepared.blend)
        shares = [
            (f"data.blend.{i}", consumed * float(c["weight"]) / total_w, c["num_train_tokens"])
            for i, c in enumerate(prepared.blend)
        ]
    else:
        shares = [("data", consumed, prepared.num_train_tokens)]
    where, used, have = max(shares, key=lambda s: s[1] / max(s[2], 1))
    epochs = used / max(have, 1)
    if epochs <= REPEAT_WARN_EPOCHS:
        return None
    return (
        f"the budget repeats the training data {epochs:,.1f} times ({where}): "
        f"{t.steps:,} steps x {t.global_batch_size:,} sequences x {spec.model.seq_length:,} "
        f"tokens = {used:,.0f} tokens drawn from {have:,} prepared training tokens "
        f"(more than {REPEAT_WARN_EPOCHS:g} passes: the loss measures memorization; "
        "point data at a larger corpus or lower training.steps)"
    )


def _start_ray_like_launch(spec: JobSpec):
    """Connect to RAY_ADDRESS or start the local instance launch() would start, early,
    so that corpus preparation runs as Ray tasks (launch() then finds it running)."""

    def start() -> None:
        from engine.launch import ensure_ray_for

        ensure_ray_for(spec)

    return start


def preflight_with_stats(
    spec: JobSpec, *, start_ray: bool = True, **options
) -> tuple[PreparedData, PrepStats]:
    """:func:`preflight` and what the data preparation did."""
    problems = check_spec_on_machine(spec)
    if problems:
        raise SpecError(problems, "job spec on this machine")
    if start_ray and "start_ray" not in options:
        options["start_ray"] = _start_ray_like_launch(spec)
    prepared, stats = prepare_data_with_stats(spec, **options)
    if stats.bytes_tokenized:
        log.info(
            "prepared %s: %.1f MB tokenized (%d of %d shards, %s, %d worker(s)) in %.1f s",
            prepared.cache_key, stats.bytes_tokenized / 1e6, stats.shards_tokenized,
            stats.shards, stats.mode, stats.workers, stats.wall_s,
        )  # fmt: skip
    warning = repeat_warning(spec, prepared)
    if warning:
        # the job's own output: the Ray job log the service shows (GET /v1/jobs/{id}/logs),
        # and the terminal of `python -m engine.run`; through logging when it is set up
        if logging.getLogger().handlers:
            log.warning(warning)
        else:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
    return prepared, stats


def preflight(spec: JobSpec, **options) -> PreparedData:
    """Raise SpecError listing every machine-level problem; else prepare and return the
    data (as Ray tasks when Ray runs or a large corpus makes it worth starting), and
    warn when the budget repeats the data more than a few times."""
    return preflight_with_stats(spec, **options)[0]
