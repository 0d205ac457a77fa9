"""Rebuild deploy/advisories/pypa-snapshot.json from a local checkout of the PyPA
advisory database, for the distributions this project installs.

    git clone --depth 1 https://github.com/pypa/advisory-database /tmp/advisory-database
    .venv/bin/python deploy/audit_refresh.py /tmp/advisory-database

The packages are the distributions of the running interpreter (run it with the
project's .venv after `make install`) plus the pins of requirements.lock (what make, CI and the
images install); `-r FILE` adds others. Each one is written, with an empty list when no
advisory names it, so deploy/audit.py can tell "no known advisory" from "not covered".

Each OSV record is trimmed to what the audit reads: id, aliases, summary (or, when a
record has none, the first 160 characters of its details), dates,
`withdrawn`, and the affected entries of that package with their ECOSYSTEM/SEMVER ranges
and `versions` lists; `details`, `references` and GIT ranges are dropped. The data is
CC-BY-4.0; the snapshot's `source` block records the repository, commit and its date.
Needs PyYAML (in the project's engine extra), which the audit itself does not.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import audit

DEFAULT_CONSTRAINTS = audit.DEPLOY_DIR.parent / "requirements.lock"
UPSTREAM = "https://github.com/pypa/advisory-database"
_KEEP = ("id", "aliases", "summary", "published", "modified", "withdrawn")


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML with every plain scalar a string (but null): an unquoted `fixed: 1.10` must
    stay the version "1.10", not the float 1.1, and dates stay as written."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag == "tag:yaml.org,2002:null"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def trim_record(record: dict[str, Any], package: str) -> dict[str, Any]:
    """The fields of `record` the audit reads, with only `package`'s affected entries."""
    trimmed = {key: record[key] for key in _KEEP if record.get(key)}
    if not trimmed.get("summary") and record.get("details"):
        trimmed["summary"] = audit.one_line(record["details"])
    trimmed["affected"] = []
    for entry in record.get("affected") or ():
        pkg = entry.get("package") or {}
        if pkg.get("ecosystem") != "PyPI" or audit.normalize_name(pkg.get("name", "")) != package:
            continue
        kept: dict[str, Any] = {"package": {"ecosystem": "PyPI", "name": pkg["name"]}}
        ranges = [r for r in entry.get("ranges") or () if r.get("type") in audit._RANGE_TYPES]
        if ranges:
            kept["ranges"] = ranges
        if entry.get("versions"):
            kept["versions"] = [str(v) for v in entry["versions"]]
        trimmed["affected"].append(kept)
    return trimmed


def collect(vulns_dir: Path, packages: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Normalised name -> trimmed records naming it, for each of `packages`."""
    wanted = {audit.normalize_name(p) for p in packages}
    found: dict[str, list[dict[str, Any]]] = {name: [] for name in sorted(wanted)}
    for path in sorted(vulns_dir.rglob("*.yaml")):
        record = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
        if not isinstance(record, dict) or "id" not in record:
            raise ValueError(f"{path}: not an OSV record")
        names = {
            audit.normalize_name((e.get("package") or {}).get("name", ""))
            for e in record.get("affected") or ()
            if (e.get("package") or {}).get("ecosystem") == "PyPI"
        }
        for name in sorted(names & wanted):
            found[name].append(trim_record(record, name))
    for records in found.values():
        records.sort(key=lambda r: r["id"])
    return found


def git_head(checkout: Path) -> tuple[str, str]:
    """(commit, ISO commit date) of the checkout's HEAD."""
    out = subprocess.run(
        ["git", "-C", str(checkout), "log", "-1", "--format=%H %cI"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return out[0], out[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="a git checkout of the advisory database")
    parser.add_argument(
        "--repository",
        default=UPSTREAM,
        help="where the checkout came from, recorded in the snapshot (default: %(default)s)",
    )
    parser.add_argument(
        "-r",
        "--requirements",
        type=Path,
        action="append",
        default=None,
        help="also cover the pins of this file (default: requirements.lock)",
    )
    parser.add_argument("-o", "--output", type=Path, default=audit.DEFAULT_SNAPSHOT)
    args = parser.parse_args(argv)

    names = set(audit.installed_distributions())
    for req_file in args.requirements or [DEFAULT_CONSTRAINTS]:
        names.update(audit.pinned_requirements(req_file))
    commit, date = git_head(args.checkout)
    packages = collect(args.checkout / "vulns", names)
    snapshot = {
        "format": audit.SNAPSHOT_FORMAT,
        "source": {
            "repository": args.repository,
            "commit": commit,
            "date": date,
            "licence": "CC-BY-4.0 (https://creativecommons.org/licenses/by/4.0/)",
            "changes": "only the packages below; OSV records trimmed to id, aliases, "
            "summary (else the start of details), dates and the PyPI affected entries' "
            "ECOSYSTEM ranges and versions",
        },
        "packages": packages,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    # one record per line: small diffs when the snapshot is refreshed
    lines = [
        "{",
        f'"format": {snapshot["format"]},',
        f'"source": {json.dumps(snapshot["source"], sort_keys=True)},',
        '"packages": {',
    ]
    items = list(packages.items())
    for i, (name, records) in enumerate(items):
        body = ",\n".join(json.dumps(r, sort_keys=True, ensure_ascii=False) for r in records)
        sep = "," if i < len(items) - 1 else ""
        lines.append(f"{json.dumps(name)}: [" + (f"\n{body}\n" if records else "") + f"]{sep}")
    lines += ["}", "}"]
    args.output.write_text("\n".join(lines) + "\n", encoding="utf-8")
    total = sum(len(r) for r in packages.values())
    print(
        f"{args.output}: {total} advisories for {len(packages)} packages "
        f"from {args.repository} at {commit[:12]} ({date})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
