"""Audit the installed Python distributions against a vendored, offline advisory snapshot.

Why: the package index this project reaches (and CI with it) has no per-release JSON
endpoint (/pypi/<name>/<version>/json is 404; only the project-level document, whose
`vulnerabilities` describe the latest release alone), and api.osv.dev does not resolve.
`pip-audit` there skips every package ("not found on PyPI") and still exits 0, so it
audits nothing while looking green. This script needs no network: it matches what is
installed against deploy/advisories/pypa-snapshot.json, a trimmed copy of the PyPA
advisory database (OSV records; refreshed by deploy/audit_refresh.py on a machine that
can reach GitHub). `--index` adds the index's latest-release data, which can be newer
than the snapshot, for the packages installed at their latest release.

    python deploy/audit.py                          # the running interpreter's environment
    python deploy/audit.py -r requirements.lock        # exact pins (name==version) in a file
    python deploy/audit.py --json                   # one JSON object on stdout
    python deploy/audit.py --index                  # plus the index's latest-release data

A finding is accepted when deploy/audit-allowlist.toml names its advisory (by id or by
any alias) with a reason and an expiry date that has not passed. Exit status: 0 when
every finding is accepted, 1 when one is not, 2 when the audit could not be done
(a distribution the snapshot does not cover, an unpinned requirement, a bad allowlist).

Matching follows the OSV schema: a version is affected when it is listed in an
`affected[].versions` list or lies in an ECOSYSTEM/SEMVER range (events introduced /
fixed / last_affected evaluated in version order); GIT ranges are ignored (the same
records list the affected releases). Versions compare as PEP 440 versions with
`packaging`; a local label is dropped (torch 2.13.0+cpu is audited as 2.13.0). Names
compare after PEP 503 normalisation.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import site
import sys
import sysconfig
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

DEPLOY_DIR = Path(__file__).resolve().parent
DEFAULT_SNAPSHOT = DEPLOY_DIR / "advisories" / "pypa-snapshot.json"
DEFAULT_ALLOWLIST = DEPLOY_DIR / "audit-allowlist.toml"
DEFAULT_INDEX_JSON = "https://pypi.org/pypi"
SNAPSHOT_FORMAT = 1
_RANGE_TYPES = frozenset({"ECOSYSTEM", "SEMVER"})
# the order events of one version are applied in: an empty range "introduced X, fixed X"
# affects nothing
_EVENT_ORDER = {"introduced": 0, "fixed": 1, "last_affected": 2}


class AuditError(Exception):
    """The audit cannot be done as asked (exit status 2)."""


def normalize_name(name: str) -> str:
    """PEP 503: runs of '-', '_' and '.' become one '-', lower case."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


def parse_bound(text: str) -> Version | None:
    """A range event's version. Some records carry bounds that are not PEP 440 (torch's
    "2.6.0-cu124", "2.6.0-NA"); those are read as their leading release number (2.6.0),
    which is what the advisory means, rather than dropping the range."""
    version = parse_version(text)
    if version is None and (release := re.match(r"\d+(\.\d+)*", text.strip())):
        version = Version(release.group())
    return version


#: OSV's `introduced: "0"` means "from the first release on", which must include
#: pre-releases of 0 such as 0.0.0.dev3 (flask-cors lists them): the lowest PEP 440 version
_BEFORE_ALL = Version("0.dev0")


def _event_version(event: Mapping[str, str]) -> tuple[str, Version] | None:
    for kind in _EVENT_ORDER:
        if kind in event:
            if kind == "introduced" and str(event[kind]) == "0":
                return kind, _BEFORE_ALL
            version = parse_bound(str(event[kind]))
            return (kind, version) if version is not None else None
    return None  # "limit" (GIT ranges only) or unknown


def in_range(version: Version, events: Iterable[Mapping[str, str]]) -> bool:
    """Whether `version` lies in one OSV range, given its events.

    Walk the events in version order: an `introduced` at or below the version opens the
    range, a `fixed` at or below it closes it, a `last_affected` strictly below it closes
    it. A range with a bound that has no version in it at all is not trusted to match
    anything (the record's `versions` list still applies).
    """
    parsed = []
    for event in events:
        kind_version = _event_version(event)
        if kind_version is None:
            if any(k in event for k in _EVENT_ORDER):
                return False
            continue
        parsed.append(kind_version)
    parsed.sort(key=lambda kv: (kv[1], _EVENT_ORDER[kv[0]]))
    affected = False
    for kind, bound in parsed:
        if kind == "introduced" and version >= bound:
            affected = True
        elif (kind == "fixed" and version >= bound) or (
            kind == "last_affected" and version > bound
        ):
            affected = False
    return affected


def affected_entry_matches(version: Version, entry: Mapping[str, Any]) -> bool:
    """Whether one `affected[]` entry of an OSV record covers `version`."""
    public = Version(version.public)
    for listed in entry.get("versions") or ():
        listed_version = parse_version(str(listed))
        if listed_version is not None and listed_version in (version, public):
            return True
    return any(
        rng.get("type") in _RANGE_TYPES and in_range(public, rng.get("events") or ())
        for rng in entry.get("ranges") or ()
    )


def fixed_versions_above(version: Version, entries: Iterable[Mapping[str, Any]]) -> list[str]:
    """The `fixed` events of these entries' ranges above `version`, lowest first: the
    releases an upgrade could go to."""
    public = Version(version.public)
    fixed: dict[Version, str] = {}
    for entry in entries:
        for rng in entry.get("ranges") or ():
            if rng.get("type") not in _RANGE_TYPES:
                continue
            for event in rng.get("events") or ():
                bound = parse_bound(str(event.get("fixed", "")))
                if bound is not None and bound > public:
                    fixed.setdefault(bound, str(event["fixed"]))
    return [fixed[v] for v in sorted(fixed)]


@dataclass(frozen=True)
class Finding:
    package: str
    version: str
    id: str
    aliases: tuple[str, ...]
    fixed: tuple[str, ...]
    summary: str
    accepted_reason: str | None = None

    @property
    def names(self) -> frozenset[str]:
        return frozenset({self.id, *self.aliases})

    def line(self) -> str:
        aliases = f" ({', '.join(self.aliases)})" if self.aliases else ""
        fixed = ", ".join(self.fixed) if self.fixed else "none listed"
        status = "accepted" if self.accepted_reason is not None else "OPEN"
        text = f"{status:8} {self.package} {self.version}: {self.id}{aliases}; fixed in: {fixed}"
        if self.summary:
            text += f"; {self.summary}"
        if self.accepted_reason is not None:
            text += f" [accepted: {self.accepted_reason}]"
        return text


@dataclass(frozen=True)
class Snapshot:
    source: dict[str, Any]
    # normalised name -> OSV records (each trimmed to that package's affected entries);
    # a name with an empty list is covered and has no advisory
    packages: dict[str, list[dict[str, Any]]]

    @classmethod
    def load(cls, path: Path) -> Snapshot:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise AuditError(f"cannot read advisory snapshot {path}: {exc}") from exc
        if data.get("format") != SNAPSHOT_FORMAT:
            raise AuditError(f"{path}: snapshot format {data.get('format')!r}, expected 1")
        return cls(source=data["source"], packages=data["packages"])

    def describe(self) -> str:
        src = self.source
        return f"{src['repository']} at {src['commit'][:12]} ({src['date'][:10]})"


def audit(packages: Mapping[str, str], snapshot: Snapshot) -> tuple[list[Finding], list[str]]:
    """The findings for `packages` (name -> version) and the names the snapshot does not
    cover, both sorted."""
    findings: list[Finding] = []
    uncovered: list[str] = []
    for name, version_text in sorted(packages.items()):
        key = normalize_name(name)
        if key not in snapshot.packages:
            uncovered.append(name)
            continue
        version = parse_version(version_text)
        if version is None:
            raise AuditError(f"{name} {version_text}: not a PEP 440 version")
        for record in snapshot.packages[key]:
            if record.get("withdrawn"):
                continue
            entries = [
                e
                for e in record.get("affected", ())
                if e.get("package", {}).get("ecosystem") == "PyPI"
                and normalize_name(e["package"].get("name", "")) == key
            ]
            if not any(affected_entry_matches(version, e) for e in entries):
                continue
            findings.append(
                Finding(
                    package=name,
                    version=version_text,
                    id=record["id"],
                    aliases=tuple(record.get("aliases") or ()),
                    fixed=tuple(fixed_versions_above(version, entries)),
                    summary=one_line(record.get("summary") or record.get("details") or ""),
                )
            )
    return findings, uncovered


def one_line(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- the index's own data (latest releases only) ----------------------------------------


@dataclass
class IndexCheck:
    findings: list[Finding] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)  # installed at the latest release
    not_latest: list[str] = field(default_factory=list)  # the index says nothing on these
    not_on_index: list[str] = field(default_factory=list)


def _project_json(base_url: str, name: str, timeout: float) -> dict[str, Any] | None:
    url = f"{base_url.rstrip('/')}/{normalize_name(name)}/json"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise AuditError(f"{url}: HTTP {exc.code}") from exc
    except (OSError, ValueError) as exc:
        raise AuditError(f"{url}: {exc}") from exc


def index_check(packages: Mapping[str, str], base_url: str, timeout: float = 60) -> IndexCheck:
    """The `vulnerabilities` of the index's project JSON, for the packages installed at
    the release it calls latest.

    PyPI's JSON API lists there the advisories of the project's latest release only, and
    the index reachable from this project's machines has no per-release endpoint
    (/pypi/<name>/<version>/json is 404), so nothing is learnt about other releases: they
    are returned in `not_latest` for the vendored snapshot alone to judge.
    """
    names = sorted(packages)
    with ThreadPoolExecutor(max_workers=4) as pool:
        documents = list(pool.map(lambda n: _project_json(base_url, n, timeout), names))
    result = IndexCheck()
    for name, document in zip(names, documents):
        if document is None:
            result.not_on_index.append(name)
            continue
        installed = parse_version(packages[name])
        latest = parse_version(str(document.get("info", {}).get("version", "")))
        if installed is None or latest is None or Version(installed.public) != latest:
            result.not_latest.append(name)
            continue
        result.checked.append(name)
        for vuln in document.get("vulnerabilities") or ():
            if vuln.get("withdrawn"):
                continue
            result.findings.append(
                Finding(
                    package=name,
                    version=packages[name],
                    id=vuln["id"],
                    aliases=tuple(vuln.get("aliases") or ()),
                    fixed=tuple(vuln.get("fixed_in") or ()),
                    summary=one_line(vuln.get("summary") or vuln.get("details") or ""),
                )
            )
    return result


def merge_findings(first: list[Finding], second: Iterable[Finding]) -> list[Finding]:
    """`first` plus the findings of `second` that are not the same advisory (an id or
    alias in common) on the same package as one already there."""
    merged = list(first)
    for finding in second:
        key = normalize_name(finding.package)
        if not any(normalize_name(f.package) == key and f.names & finding.names for f in merged):
            merged.append(finding)
    return merged


# --- allowlist --------------------------------------------------------------------------


@dataclass(frozen=True)
class Acceptance:
    id: str
    reason: str
    reviewed: dt.date
    expires: dt.date
    package: str | None = None

    def covers(self, finding: Finding) -> bool:
        if self.package is not None and normalize_name(self.package) != normalize_name(
            finding.package
        ):
            return False
        return self.id in finding.names


def load_allowlist(path: Path) -> list[Acceptance]:
    """The `[[accept]]` tables of a TOML allowlist; a missing file is an empty list.

    Each needs `id` (the advisory's id or any alias), a non-empty `reason`, and the dates
    `reviewed` (when it was accepted) and `expires` (after which the finding fails again
    until someone reviews it); `package` optionally restricts it to one distribution.
    """
    if not path.exists():
        return []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise AuditError(f"cannot read allowlist {path}: {exc}") from exc
    unknown = set(data) - {"accept"}
    if unknown:
        raise AuditError(f"{path}: unknown top-level keys {sorted(unknown)}")
    accepted = []
    for i, entry in enumerate(data.get("accept", []), 1):
        where = f"{path}: [[accept]] #{i}"
        extra = set(entry) - {"id", "reason", "reviewed", "expires", "package"}
        if extra:
            raise AuditError(f"{where}: unknown keys {sorted(extra)}")
        if not isinstance(entry.get("id"), str) or not entry["id"].strip():
            raise AuditError(f"{where}: needs an advisory `id`")
        if not isinstance(entry.get("reason"), str) or not entry["reason"].strip():
            raise AuditError(f"{where} ({entry['id']}): needs a `reason`")
        for key in ("reviewed", "expires"):
            if type(entry.get(key)) is not dt.date:
                raise AuditError(f"{where} ({entry['id']}): `{key}` must be a date (YYYY-MM-DD)")
        if entry["expires"] < entry["reviewed"]:
            raise AuditError(f"{where} ({entry['id']}): `expires` is before `reviewed`")
        accepted.append(
            Acceptance(
                id=entry["id"].strip(),
                reason=" ".join(entry["reason"].split()),
                reviewed=entry["reviewed"],
                expires=entry["expires"],
                package=entry.get("package"),
            )
        )
    return accepted


@dataclass
class Verdict:
    open: list[Finding] = field(default_factory=list)
    accepted: list[Finding] = field(default_factory=list)
    expired: list[Acceptance] = field(default_factory=list)  # matched a finding, too old
    unused: list[Acceptance] = field(default_factory=list)  # matched nothing


def apply_allowlist(
    findings: Iterable[Finding], allowlist: list[Acceptance], today: dt.date
) -> Verdict:
    verdict = Verdict()
    used: set[int] = set()
    expired: set[int] = set()
    for finding in findings:
        matching = [i for i, a in enumerate(allowlist) if a.covers(finding)]
        valid = [i for i in matching if allowlist[i].expires >= today]
        expired.update(set(matching) - set(valid))
        if valid:
            used.add(valid[0])
            reason = allowlist[valid[0]].reason
            verdict.accepted.append(Finding(**{**asdict(finding), "accepted_reason": reason}))
        else:
            verdict.open.append(finding)
    verdict.expired = [allowlist[i] for i in sorted(expired - used)]
    verdict.unused = [a for i, a in enumerate(allowlist) if i not in used and i not in expired]
    return verdict


# --- what to audit ----------------------------------------------------------------------


def installed_distributions(path: list[str] | None = None) -> dict[str, str]:
    """Name -> version of the distributions installed in `path` (default: this
    interpreter's site-packages directories), the first one found winning as it does for
    imports. Not all of sys.path: importing setuptools puts its `_vendor` directory
    there, whose bundled copies (jaraco.*, zipp, ...) are not installed packages."""
    found: dict[str, str] = {}
    seen: set[str] = set()
    for dist in metadata.distributions(path=path if path is not None else _site_packages()):
        name = dist.metadata["Name"]
        if name and normalize_name(name) not in seen:
            seen.add(normalize_name(name))
            found[name] = dist.version
    return found


def _site_packages() -> list[str]:
    """The directories this interpreter installs distributions into (and the user's)."""
    paths = sysconfig.get_paths()
    dirs = [paths["purelib"], paths["platlib"]]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(dirs) if Path(d).is_dir()]


def pinned_requirements(path: Path) -> dict[str, str]:
    """Name -> version of a requirements or constraints file whose every requirement is
    pinned with `==` (or `===`); pip options other than --hash are refused."""
    try:
        text = path.read_text(encoding="utf-8").replace("\\\n", " ")
    except OSError as exc:
        raise AuditError(f"cannot read {path}: {exc}") from exc
    pins: dict[str, str] = {}
    problems = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(^|\s)#.*", "", raw).strip()
        line = re.sub(r"\s--hash[=\s]\S+", "", line).strip()
        if not line:
            continue
        if line.startswith("-"):
            problems.append(f"{path}:{lineno}: pip option {line.split()[0]} is not supported")
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            problems.append(f"{path}:{lineno}: {exc}")
            continue
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator not in ("==", "===") or "*" in specs[0].version:
            problems.append(f"{path}:{lineno}: {line!r} is not pinned to one version (==)")
            continue
        pins[req.name] = specs[0].version
    if problems:
        raise AuditError("\n".join(problems))
    return pins


# --- command line -----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-r",
        "--requirements",
        type=Path,
        action="append",
        help="audit the name==version pins of this file instead of the environment (repeatable)",
    )
    parser.add_argument(
        "--path",
        action="append",
        help="audit the distributions in this directory (a site-packages; repeatable) "
        "instead of the running interpreter's",
    )
    parser.add_argument("--snapshot", type=Path, default=DEFAULT_SNAPSHOT)
    parser.add_argument("--allowlist", type=Path, default=DEFAULT_ALLOWLIST)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument(
        "--index",
        nargs="?",
        const=DEFAULT_INDEX_JSON,
        metavar="JSON_API",
        help="also read the index's project JSON (default %(const)s) for advisories newer "
        "than the snapshot; it covers only packages installed at their latest release",
    )
    parser.add_argument("--today", type=dt.date.fromisoformat, default=dt.date.today())
    args = parser.parse_args(argv)

    try:
        snapshot = Snapshot.load(args.snapshot)
        allowlist = load_allowlist(args.allowlist)
        if args.requirements:
            packages: dict[str, str] = {}
            for req_file in args.requirements:
                packages.update(pinned_requirements(req_file))
        else:
            packages = installed_distributions(args.path)
        findings, uncovered = audit(packages, snapshot)
        from_index = index_check(packages, args.index) if args.index else None
        if from_index is not None:
            findings = merge_findings(findings, from_index.findings)
    except AuditError as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return 2
    verdict = apply_allowlist(findings, allowlist, args.today)
    status = 2 if uncovered else 1 if verdict.open else 0

    if args.json:
        report = {
            "snapshot": snapshot.source,
            "audited": len(packages),
            "open": [asdict(f) for f in verdict.open],
            "accepted": [asdict(f) for f in verdict.accepted],
            "uncovered": uncovered,
            "expired_acceptances": [a.id for a in verdict.expired],
            "unused_acceptances": [a.id for a in verdict.unused],
            "status": status,
        }
        if from_index is not None:
            report["index"] = {
                "url": args.index,
                "checked": from_index.checked,
                "not_latest": from_index.not_latest,
                "not_on_index": from_index.not_on_index,
            }
        print(json.dumps(report, indent=2, default=str))
        return status

    for finding in [*verdict.open, *verdict.accepted]:
        print(finding.line())
    for acc in verdict.expired:
        print(f"audit: allowlist entry {acc.id} expired on {acc.expires}; review it again")
    for acc in verdict.unused:
        print(f"audit: allowlist entry {acc.id} matches no finding; remove it")
    if uncovered:
        print(
            f"audit: the snapshot has no data on {', '.join(uncovered)}: refresh it "
            "(deploy/advisories/README.md) so they are audited too",
        )
    if from_index is not None:
        print(
            f"audit: the index at {args.index} has advisory data for {len(from_index.checked)} "
            f"of them (installed at their latest release); {len(from_index.not_latest)} are not at "
            f"their latest release ({', '.join(from_index.not_latest) or '-'}), "
            f"{len(from_index.not_on_index)} are not on it"
        )
    print(
        f"audit: {len(packages)} distributions against {snapshot.describe()}: "
        f"{len(verdict.open)} open, {len(verdict.accepted)} accepted"
        + (f", {len(uncovered)} not covered" if uncovered else "")
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
