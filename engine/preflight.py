"""Checks that need the machine: run on the driver before any Ray worker starts.

The schema (``alto_client.spec``) has already checked everything that needs no
filesystem; here the data is located, validated and, for corpora, tokenized into
the shared cache, so a bad path or a corrupt ``.idx`` is a one-line error at
submission instead of a crash inside a worker minutes later.
"""

from __future__ import annotations

from pathlib import Path

from alto_client.spec import JobSpec, SpecError, SpecProblem

from engine.data.prepare import PreparedData, indexed_prefix, prepare_data
from engine.data.roots import resolve_in_roots
from engine.errors import DataError


def check_spec_on_machine(spec: JobSpec) -> list[SpecProblem]:
    """Problems with the spec on this machine, without building anything."""
    problems: list[SpecProblem] = []
    d = spec.data
    if d.source == "files":
        for i, name in enumerate(d.files):
            try:
                path = resolve_in_roots(name, f"data.files.{i}")
            except DataError as exc:
                problems.extend(exc.problems)
                continue
            if not path.is_file():
                problems.append(SpecProblem(f"data.files.{i}", f"{name!r} does not exist"))
    if d.source == "indexed" and d.path:
        try:
            prefix = str(resolve_in_roots(indexed_prefix(d.path), "data.path"))
        except DataError as exc:
            problems.extend(exc.problems)
            prefix = None
        for suffix in (".bin", ".idx") if prefix is not None else ():
            if not Path(prefix + suffix).is_file():
                problems.append(
                    SpecProblem(
                        "data.path",
                        f"{prefix + suffix} does not exist "
                        "(an indexed dataset needs PREFIX.bin and PREFIX.idx)",
                    )
                )
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
    import os

    return bool(os.environ.get("RAY_ADDRESS"))


def preflight(spec: JobSpec) -> PreparedData:
    """Raise SpecError listing every machine-level problem; else prepare and return the data."""
    problems = check_spec_on_machine(spec)
    if problems:
        raise SpecError(problems, "job spec on this machine")
    return prepare_data(spec)
