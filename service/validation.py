"""Checks the service adds on top of the JobSpec's own validation.

They protect storage and JSON answers: every number must be finite (JSON has no
Infinity, PostgreSQL's json type refuses it) and every integer must fit 64 bits (what
databases, numpy and torch seeds hold), and every name or tag must be printable
text of bounded length (PostgreSQL refuses NUL characters).
"""

from __future__ import annotations

import math
import re
from pathlib import PurePosixPath
from typing import Any

from alto_client.models import FieldError
from alto_client.spec import JobSpec

MAX_TAGS = 32
MAX_TAG_LEN = 100
METRIC_NAME_RE = re.compile(r"^[A-Za-z0-9_.:/\-]{1,200}$")
MAX_STEP = 2**62


def _walk(value: Any, loc: list[str | int], out: list[FieldError]) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int) and not -(2**63) < value < 2**63:
        out.append(
            FieldError(
                loc=loc, msg=f"must be below 2**63 in magnitude, got {value}", type="int_range"
            )
        )
    elif isinstance(value, float) and not math.isfinite(value):
        out.append(
            FieldError(loc=loc, msg=f"must be a finite number, got {value}", type="finite_number")
        )
    elif isinstance(value, str) and ("\x00" in value):
        out.append(FieldError(loc=loc, msg="must not contain NUL characters", type="string_type"))
    elif isinstance(value, dict):
        for k, v in value.items():
            _walk(v, [*loc, str(k)], out)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _walk(v, [*loc, i], out)


def spec_problems(spec: JobSpec, loc: list[str | int]) -> list[FieldError]:
    """Problems the service cannot store or serve, located under `loc` (e.g. ["body"])."""
    out: list[FieldError] = []
    _walk(spec.model_dump(mode="python"), list(loc), out)
    if not spec.name.isprintable():
        out.append(FieldError(loc=[*loc, "name"], msg="must be printable text", type="value_error"))
    if len(spec.tags) > MAX_TAGS:
        out.append(
            FieldError(
                loc=[*loc, "tags"],
                msg=f"at most {MAX_TAGS} tags are allowed, got {len(spec.tags)}",
                type="value_error",
            )
        )
    for i, tag in enumerate(spec.tags):
        if not (1 <= len(tag) <= MAX_TAG_LEN) or not tag.isprintable():
            out.append(
                FieldError(
                    loc=[*loc, "tags", i],
                    msg=f"a tag must be 1-{MAX_TAG_LEN} printable characters, got {tag!r}",
                    type="value_error",
                )
            )
    return out


def _outside_roots(name: str, roots: list[str]) -> str | None:
    """Why `name` may not be read by a job with these roots (None: it may, as far as the
    name tells; the engine checks again with symlinks resolved). Purely lexical: the
    service never looks at the cluster's filesystem, so nothing here tells what exists."""
    path = PurePosixPath(name)
    if not path.is_absolute():
        return f"{name!r} must be an absolute path inside the data roots ({', '.join(roots)})"
    if ".." in path.parts:
        return f"{name!r} must not contain '..'"
    if not any(path == PurePosixPath(r) or PurePosixPath(r) in path.parents for r in roots):
        return f"{name!r} is outside the data roots allowed for you ({', '.join(roots)})"
    return None


def data_path_problems(spec: JobSpec, roots: list[str], loc: list[str | int]) -> list[FieldError]:
    """Paths of the spec's data section that lie outside the owner's data roots.

    A glob or directory entry is checked as written: its matches lie below its fixed
    part, and the engine checks each match again with symlinks resolved."""
    d = spec.data
    named: list[tuple[list[str | int], str]] = []
    if d.source == "indexed" and d.path is not None:
        named.append(([*loc, "data", "path"], d.path))
    if d.source == "files":
        named.extend(([*loc, "data", "files", i], f) for i, f in enumerate(d.files))
    if d.source == "blend":
        for i, c in enumerate(d.blend):
            where = [*loc, "data", "blend", i]
            named.extend(([*where, "files", j], f) for j, f in enumerate(c.files))
            if c.path is not None:
                named.append(([*where, "path"], c.path))
    if not named:
        return []
    if not roots:
        return [
            FieldError(
                loc=[*loc, "data", "source"],
                msg=f"source {d.source!r} reads files, but this service has no data roots "
                "for you; use 'python-stdlib' (operators: set ALTO_DATA_ROOTS)",
                type="value_error",
            )
        ]
    out = []
    for where, name in named:
        why = _outside_roots(name, roots)
        if why is not None:
            out.append(FieldError(loc=where, msg=why, type="value_error"))
    return out
