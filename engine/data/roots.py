"""Where a job may read data: the roots the service's operator allows for its owner.

A job launched by the service gets `ALTO_DATA_ROOTS` in its environment (set from the
service's settings, never from the spec; '{owner}' already filled in). Every path a
spec names is then resolved with symlinks followed and must lie inside one of those
roots; the error for a path outside says nothing about whether it exists. A run
started by hand (`python -m engine.run spec.yaml`, no such variable) reads what its
user can read, as any program they run would.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.errors import DataError

DATA_ROOTS_ENV = "ALTO_DATA_ROOTS"


def data_roots() -> list[Path] | None:
    """The allowed roots (resolved), or None when this run is not confined."""
    value = os.environ.get(DATA_ROOTS_ENV)
    if value is None:
        return None
    return [Path(os.path.realpath(part)) for part in value.split(os.pathsep) if part.strip()]


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def resolve_in_roots(name: str, field: str) -> Path:
    """`name` as a path this run may read; DataError naming `field` when it may not."""
    roots = data_roots()
    if roots is None:
        return Path(name)
    if not roots:
        raise DataError(
            field,
            "this service allows no data paths (its operator set no data roots); "
            "use data.source 'python-stdlib'",
        )
    if not os.path.isabs(name):
        raise DataError(field, f"{name!r} must be an absolute path inside the data roots")
    real = Path(os.path.realpath(name))
    if not any(_inside(real, root) for root in roots):
        raise DataError(
            field,
            f"{name!r} is not inside the data roots allowed for this job "
            f"({', '.join(str(r) for r in roots)})",
        )
    return real


def check_cache_outside_roots(cache_dir: Path) -> None:
    """Refuse a cache inside a data root: users can write there, and megatron loads its
    cached index files with pickle allowed, so a planted file would run as the worker."""
    roots = data_roots()
    if not roots:
        return
    real = Path(os.path.realpath(cache_dir))
    for root in roots:
        if _inside(real, root):
            raise DataError(
                "ALTO_CACHE_DIR",
                f"the cluster's cache directory {cache_dir} lies inside the data root {root}; "
                "the operator must move it out of the users' data",
            )
