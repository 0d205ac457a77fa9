"""Print the requirements a pyproject.toml declares for chosen extras, one per line.

Why: the container images install third-party packages in a cached layer of their own,
before the project's source is copied in, and they must install exactly what
pyproject.toml declares; a second hand-written list would drift from it. Versions are
pinned separately by the project's lock, requirements.lock (`pip install -c`).

    python deploy/requirements.py pyproject.toml engine gpu --exclude torch
    python deploy/requirements.py clients/python/pyproject.toml cli

Standard library only: it runs in the image's builder stage before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirement_name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement string."""
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"requirement {requirement!r} does not start with a distribution name")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def declared_requirements(
    pyproject: Path, extras: list[str], *, base: bool = True, exclude: frozenset[str] = frozenset()
) -> list[str]:
    """The base dependencies (when `base`) plus those of each extra, in declaration
    order, without duplicates and without the distributions named in `exclude`.

    An extra that pyproject.toml does not declare is an error naming the ones it does,
    so a renamed extra breaks the image build instead of silently installing less.
    """
    project = tomllib.loads(pyproject.read_text())["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise ValueError(
            f"extras {unknown} are not declared in {pyproject}; declared: {sorted(optional)}"
        )
    wanted: list[str] = list(project.get("dependencies", [])) if base else []
    for extra in extras:
        wanted.extend(optional[extra])
    excluded = {requirement_name(name) for name in exclude}
    seen: set[str] = set()
    result: list[str] = []
    for requirement in wanted:
        if requirement_name(requirement) in excluded or requirement in seen:
            continue
        seen.add(requirement)
        result.append(requirement)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("extras", nargs="*")
    parser.add_argument("--no-base", action="store_true", help="leave out [project].dependencies")
    parser.add_argument("--exclude", action="append", default=[], metavar="NAME")
    args = parser.parse_args(argv)
    try:
        lines = declared_requirements(
            args.pyproject, args.extras, base=not args.no_base, exclude=frozenset(args.exclude)
        )
    except (OSError, KeyError, ValueError) as error:
        print(f"requirements.py: {error}", file=sys.stderr)
        return 2
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
