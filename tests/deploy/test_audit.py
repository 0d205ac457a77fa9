"""deploy/audit.py: OSV range matching on hand-written records with known answers, the
allowlist, the command line's exit status, the snapshot refresh, and an offline run
against this virtual environment with the vendored snapshot."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from packaging.version import Version

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
TODAY = dt.date(2026, 12, 1)


def ev(**kwargs: str) -> dict[str, str]:
    return dict(kwargs)


def record(
    id: str, package: str = "demo", *, ranges=(), versions=(), **extra: Any
) -> dict[str, Any]:
    entry: dict[str, Any] = {"package": {"ecosystem": "PyPI", "name": package}}
    if ranges:
        entry["ranges"] = [{"type": "ECOSYSTEM", "events": list(r)} for r in ranges]
    if versions:
        entry["versions"] = list(versions)
    return {"id": id, "affected": [entry], **extra}


# --- ranges -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("events", "affected", "not_affected"),
    [
        # introduced 0 / fixed: everything below the fix, pre-releases of the fix included
        (
            [ev(introduced="0"), ev(fixed="2.0")],
            ["0", "0.0.1", "1.9.9", "2.0rc1", "2.0.0a1", "1.0.post3"],
            ["2.0", "2.0.0", "2.0.1", "2.1.0a1", "10.0"],
        ),
        # a window
        (
            [ev(introduced="1.2"), ev(fixed="1.4")],
            ["1.2", "1.2.0", "1.3.9", "1.4.0rc2"],
            ["1.1.99", "1.2rc1", "1.4", "1.5"],
        ),
        # last_affected is inclusive, and a post-release of it is later
        (
            [ev(introduced="0"), ev(last_affected="2.6.0")],
            ["0.1", "2.6", "2.6.0", "2.6.0rc1"],
            ["2.6.0.post1", "2.6.1", "3.0"],
        ),
        # two branches in one range, events out of order: 1.x fixed in 1.26.19, 2.x in 2.2.2
        (
            [ev(fixed="2.2.2"), ev(introduced="2.0.0"), ev(fixed="1.26.19"), ev(introduced="0")],
            ["1.26.18", "2.0.0", "2.2.1", "2.2.2b1"],
            ["1.26.19", "1.27", "2.2.2", "2.3.0"],
        ),
        # introduced with no end: every later release
        ([ev(introduced="3.1")], ["3.1", "99"], ["3.0.9", "3.1rc1"]),
        # an empty window affects nothing, whatever order its events come in
        ([ev(introduced="1.0"), ev(fixed="1.0")], [], ["0.9", "1.0", "1.1"]),
        ([ev(fixed="1.0"), ev(introduced="1.0")], [], ["0.9", "1.0", "1.1"]),
        # PEP 440 spellings of the same version compare equal
        ([ev(introduced="0"), ev(fixed="1.0.0")], ["1.0-rc1", "0.9"], ["1.0", "1", "v1.0"]),
        # bounds that are not PEP 440 (real torch records) read as their release number
        (
            [ev(introduced="0"), ev(last_affected="2.6.0-cu124")],
            ["2.5.1", "2.6.0"],
            ["2.6.1", "2.13.0"],
        ),
    ],
)
def test_in_range(
    audit: ModuleType, events: list[dict[str, str]], affected: list[str], not_affected: list[str]
) -> None:
    for version in affected:
        assert audit.in_range(Version(version), events), version
    for version in not_affected:
        assert not audit.in_range(Version(version), events), version


def test_a_range_with_an_unreadable_bound_matches_nothing(audit: ModuleType) -> None:
    assert not audit.in_range(Version("1.0"), [ev(introduced="0"), ev(fixed="unknown")])


def test_entry_matches_versions_list_or_any_range(audit: ModuleType) -> None:
    entry = record(
        "X",
        ranges=[[ev(introduced="0"), ev(fixed="1.0")], [ev(introduced="2.0"), ev(fixed="2.1")]],
        versions=["1.5", "3.0.0rc1"],
    )["affected"][0]
    matches = {v: audit.affected_entry_matches(Version(v), entry) for v in [
        "0.9", "1.0", "1.5", "1.5.0", "1.6", "2.0.5", "2.1", "3.0rc1", "3.0"
    ]}  # fmt: skip
    assert matches == {
        "0.9": True,  # first range
        "1.0": False,
        "1.5": True,  # versions list
        "1.5.0": True,  # same version, other spelling
        "1.6": False,
        "2.0.5": True,  # second range
        "2.1": False,
        "3.0rc1": True,  # a listed pre-release
        "3.0": False,
    }


def test_local_version_label_is_audited_as_its_public_version(audit: ModuleType) -> None:
    listed = record("X", versions=["2.4.0"])["affected"][0]
    assert audit.affected_entry_matches(Version("2.4.0+cu124"), listed)
    assert not audit.affected_entry_matches(Version("2.4.1+cu124"), listed)
    last = record("X", ranges=[[ev(introduced="0"), ev(last_affected="2.6.0")]])["affected"][0]
    assert audit.affected_entry_matches(Version("2.6.0+cpu"), last)  # 2.6.0+cpu > 2.6.0
    assert not audit.affected_entry_matches(Version("2.6.1+cpu"), last)
    fixed = record("X", ranges=[[ev(introduced="2.6.0"), ev(fixed="2.7")]])["affected"]
    assert audit.affected_entry_matches(Version("2.6.0+cpu"), fixed[0])
    assert audit.fixed_versions_above(Version("2.7.0+cpu"), fixed) == []


def test_git_ranges_are_ignored(audit: ModuleType) -> None:
    entry = {
        "package": {"ecosystem": "PyPI", "name": "demo"},
        "ranges": [{"type": "GIT", "repo": "x", "events": [ev(introduced="0"), ev(fixed="a1b2")]}],
    }
    assert not audit.affected_entry_matches(Version("1.0"), entry)


def test_fixed_versions_above_lists_upgrade_targets(audit: ModuleType) -> None:
    entries = record(
        "X", ranges=[[ev(introduced="0"), ev(fixed="1.26.19"), ev(introduced="2.0"), ev(fixed="2.2.2")]]
    )["affected"]  # fmt: skip
    assert audit.fixed_versions_above(Version("1.25"), entries) == ["1.26.19", "2.2.2"]
    assert audit.fixed_versions_above(Version("2.1.0"), entries) == ["2.2.2"]
    assert audit.fixed_versions_above(Version("3.0"), entries) == []


# --- audit over a snapshot --------------------------------------------------------------


def snapshot_of(audit: ModuleType, packages: dict[str, list[dict[str, Any]]]) -> Any:
    source = {"repository": "test", "commit": "0" * 40, "date": "2026-01-01T00:00:00Z"}
    return audit.Snapshot(source=source, packages=packages)


@pytest.fixture
def demo_snapshot(audit: ModuleType) -> Any:
    return snapshot_of(
        audit,
        {
            "typing-extensions": [
                record(
                    "PYSEC-1",
                    "typing_extensions",
                    ranges=[[ev(introduced="0"), ev(fixed="4.0")]],
                    aliases=["CVE-2020-1", "GHSA-aaaa"],
                    summary="first",
                ),
                record("PYSEC-2", "Typing.Extensions", versions=["3.10.0.2"], summary="second"),
                # withdrawn: never a finding
                record(
                    "PYSEC-3", "typing-extensions", ranges=[[ev(introduced="0")]], withdrawn="2025"
                ),
                # names another package only
                record("PYSEC-4", "other", ranges=[[ev(introduced="0")]]),
            ],
            "six": [],
        },
    )


def test_audit_matches_by_normalised_name(audit: ModuleType, demo_snapshot: Any) -> None:
    findings, uncovered = audit.audit(
        {"Typing_Extensions": "3.10.0.2", "six": "1.0", "mystery-pkg": "1.0"}, demo_snapshot
    )
    assert [(f.package, f.id, f.fixed) for f in findings] == [
        ("Typing_Extensions", "PYSEC-1", ("4.0",)),
        ("Typing_Extensions", "PYSEC-2", ()),
    ]
    assert findings[0].aliases == ("CVE-2020-1", "GHSA-aaaa")
    assert uncovered == ["mystery-pkg"]

    findings, uncovered = audit.audit({"typing-extensions": "4.0.0"}, demo_snapshot)
    assert findings == [] and uncovered == []


def test_an_invalid_installed_version_is_an_error(audit: ModuleType, demo_snapshot: Any) -> None:
    with pytest.raises(audit.AuditError, match="not a PEP 440 version"):
        audit.audit({"six": "not a version"}, demo_snapshot)


# --- allowlist --------------------------------------------------------------------------


def write_allowlist(path: Path, *entries: str) -> Path:
    path.write_text("\n".join(f"[[accept]]\n{e}" for e in entries), encoding="utf-8")
    return path


ACCEPT_ALIAS = 'id = "CVE-2020-1"\nreason = "not used"\nreviewed = 2026-11-01\nexpires = 2027-01-01'


def test_allowlist_accepts_by_alias_and_reports_expired_and_unused(
    audit: ModuleType, demo_snapshot: Any, tmp_path: Path
) -> None:
    findings, _ = audit.audit({"typing-extensions": "3.10.0.2"}, demo_snapshot)
    allowlist = audit.load_allowlist(
        write_allowlist(
            tmp_path / "a.toml",
            ACCEPT_ALIAS,
            'id = "PYSEC-2"\nreason = "old"\nreviewed = 2025-01-01\nexpires = 2026-01-01',
            'id = "PYSEC-999"\nreason = "gone"\nreviewed = 2026-01-01\nexpires = 2027-01-01',
        )
    )
    verdict = audit.apply_allowlist(findings, allowlist, TODAY)
    assert [(f.id, f.accepted_reason) for f in verdict.accepted] == [("PYSEC-1", "not used")]
    assert [f.id for f in verdict.open] == ["PYSEC-2"]  # its acceptance expired
    assert [a.id for a in verdict.expired] == ["PYSEC-2"]
    assert [a.id for a in verdict.unused] == ["PYSEC-999"]
    # the day it expires still counts; the day after does not
    assert not audit.apply_allowlist(findings, allowlist, dt.date(2026, 1, 1)).expired
    assert audit.apply_allowlist(findings, allowlist, dt.date(2027, 1, 2)).accepted == []


def test_allowlist_package_restriction(
    audit: ModuleType, demo_snapshot: Any, tmp_path: Path
) -> None:
    findings, _ = audit.audit({"typing-extensions": "3.0"}, demo_snapshot)
    for package, accepted in [("typing_extensions", True), ("six", False)]:
        path = write_allowlist(tmp_path / "a.toml", f'{ACCEPT_ALIAS}\npackage = "{package}"')
        verdict = audit.apply_allowlist(findings, audit.load_allowlist(path), TODAY)
        assert bool(verdict.accepted) is accepted, package


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('id = "X"\nreviewed = 2026-01-01\nexpires = 2027-01-01', "needs a `reason`"),
        ('id = "X"\nreason = " "\nreviewed = 2026-01-01\nexpires = 2027-01-01', "needs a `reason`"),
        ('reason = "r"\nreviewed = 2026-01-01\nexpires = 2027-01-01', "needs an advisory `id`"),
        ('id = "X"\nreason = "r"\nreviewed = 2026-01-01', "`expires` must be a date"),
        ('id = "X"\nreason = "r"\nreviewed = "soon"\nexpires = 2027-01-01', "`reviewed` must"),
        ('id = "X"\nreason = "r"\nreviewed = 2026-01-01T00:00:00\nexpires = 2027-01-01', "date"),
        ('id = "X"\nreason = "r"\nreviewed = 2027-01-01\nexpires = 2026-01-01', "before"),
        ('id = "X"\nreason = "r"\nreviewed = 2026-01-01\nexpires = 2027-01-01\nwhy = 1', "unknown"),
    ],
)
def test_allowlist_rejects_incomplete_entries(
    audit: ModuleType, tmp_path: Path, entry: str, message: str
) -> None:
    with pytest.raises(audit.AuditError, match=message):
        audit.load_allowlist(write_allowlist(tmp_path / "a.toml", entry))


def test_the_vendored_allowlist_is_valid(audit: ModuleType) -> None:
    for acceptance in audit.load_allowlist(audit.DEFAULT_ALLOWLIST):
        assert acceptance.reason and acceptance.expires >= acceptance.reviewed


# --- requirements files and the command line --------------------------------------------


def test_pinned_requirements(audit: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "req.txt"
    path.write_text(
        "# comment\n"
        "Foo_Bar[extra]==1.2 ; python_version >= '3'  # why\n"
        "baz===2.0rc1 \\\n"
        "    --hash=sha256:abc \\\n"
        "    --hash=sha256:def\n",
        encoding="utf-8",
    )
    assert audit.pinned_requirements(path) == {"Foo_Bar": "1.2", "baz": "2.0rc1"}
    for bad in ["foo>=1.0", "foo==1.*", "foo", "-r other.txt", "foo==1.0,<2"]:
        path.write_text(bad + "\n", encoding="utf-8")
        with pytest.raises(audit.AuditError):
            audit.pinned_requirements(path)
    with pytest.raises(audit.AuditError, match="cannot read"):
        audit.pinned_requirements(tmp_path / "missing.txt")


def run_main(audit: ModuleType, tmp_path: Path, snapshot: Any, reqs: str, *args: str) -> int:
    snap = tmp_path / "snap.json"
    snap.write_text(
        json.dumps({"format": 1, "source": snapshot.source, "packages": snapshot.packages}),
        encoding="utf-8",
    )
    req = tmp_path / "req.txt"
    req.write_text(reqs, encoding="utf-8")
    argv = ["--snapshot", str(snap), "-r", str(req), "--today", TODAY.isoformat(), *args]
    if "--allowlist" not in args:
        argv += ["--allowlist", str(tmp_path / "none.toml")]
    return audit.main(argv)


def test_main_exit_status(
    audit: ModuleType, demo_snapshot: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_main(audit, tmp_path, demo_snapshot, "six==1.0\ntyping-extensions==4.1\n") == 0
    assert "2 distributions against test at 000000000000 (2026-01-01): 0 open" in (
        capsys.readouterr().out
    )

    assert run_main(audit, tmp_path, demo_snapshot, "typing-extensions==3.9\n") == 1
    out = capsys.readouterr().out
    assert (
        "OPEN     typing-extensions 3.9: PYSEC-1 (CVE-2020-1, GHSA-aaaa); fixed in: 4.0; first"
        in out
    )

    allow = write_allowlist(tmp_path / "allow.toml", ACCEPT_ALIAS)
    status = run_main(
        audit, tmp_path, demo_snapshot, "typing-extensions==3.9\n", "--allowlist", str(allow)
    )
    assert status == 0
    assert "[accepted: not used]" in capsys.readouterr().out

    assert run_main(audit, tmp_path, demo_snapshot, "six==1.0\nunknown==1.0\n") == 2
    assert "no data on unknown" in capsys.readouterr().out

    assert run_main(audit, tmp_path, demo_snapshot, "six>=1.0\n") == 2
    assert "not pinned" in capsys.readouterr().err


def test_main_json(
    audit: ModuleType, demo_snapshot: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = run_main(audit, tmp_path, demo_snapshot, "typing-extensions==3.9\n", "--json")
    report = json.loads(capsys.readouterr().out)
    assert status == report["status"] == 1
    assert report["audited"] == 1 and report["uncovered"] == [] and report["accepted"] == []
    assert report["open"] == [
        {
            "package": "typing-extensions",
            "version": "3.9",
            "id": "PYSEC-1",
            "aliases": ["CVE-2020-1", "GHSA-aaaa"],
            "fixed": ["4.0"],
            "summary": "first",
            "accepted_reason": None,
        }
    ]


# --- the index's latest-release data ----------------------------------------------------


@pytest.fixture
def json_index() -> Iterator[tuple[str, dict[str, Any]]]:
    """A local HTTP server answering /pypi/<name>/json from a dict (404 otherwise)."""
    documents: dict[str, Any] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            name = self.path.removeprefix("/pypi/").removesuffix("/json")
            if name not in documents:
                self.send_error(404)
                return
            body = json.dumps(documents[name]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/pypi", documents
    finally:
        server.shutdown()
        server.server_close()


def project(latest: str, *vulns: dict[str, Any]) -> dict[str, Any]:
    return {"info": {"version": latest}, "vulnerabilities": list(vulns)}


def test_index_check_uses_latest_release_data_only(
    audit: ModuleType, json_index: tuple[str, dict[str, Any]]
) -> None:
    url, documents = json_index
    vuln = {"id": "GHSA-new", "aliases": ["CVE-2026-9"], "fixed_in": ["2.1"], "summary": "s"}
    withdrawn = {"id": "GHSA-old", "aliases": [], "withdrawn": "2026-01-01T00:00:00Z"}
    documents["typing-extensions"] = project("2.0", vuln, withdrawn)
    documents["six"] = project("1.17.0", vuln)  # installed 1.16: says nothing about it
    documents["torch"] = project("2.13.0", vuln)  # local label: same release
    result = audit.index_check(
        {"Typing_Extensions": "2.0.0", "six": "1.16", "torch": "2.13.0+cpu", "gone": "1"}, url
    )
    assert [(f.package, f.id, f.aliases, f.fixed) for f in result.findings] == [
        ("Typing_Extensions", "GHSA-new", ("CVE-2026-9",), ("2.1",)),
        ("torch", "GHSA-new", ("CVE-2026-9",), ("2.1",)),
    ]
    assert result.checked == ["Typing_Extensions", "torch"]
    assert result.not_latest == ["six"]
    assert result.not_on_index == ["gone"]


def test_index_findings_merge_with_the_snapshot_by_alias(
    audit: ModuleType,
    demo_snapshot: Any,
    json_index: tuple[str, dict[str, Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, documents = json_index
    same = {"id": "GHSA-aaaa", "aliases": ["PYSEC-1"], "fixed_in": ["4.0"]}
    new = {"id": "GHSA-bbbb", "aliases": [], "fixed_in": [], "details": "newer than the snapshot"}
    documents["typing-extensions"] = project("3.9", same, new)
    status = run_main(
        audit, tmp_path, demo_snapshot, "typing-extensions==3.9\n", "--index", url, "--json"
    )
    report = json.loads(capsys.readouterr().out)
    assert status == 1
    assert [f["id"] for f in report["open"]] == ["PYSEC-1", "GHSA-bbbb"]
    assert report["index"]["checked"] == ["typing-extensions"]


def test_an_unreachable_index_fails_the_audit(
    audit: ModuleType, demo_snapshot: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/pypi"
    assert run_main(audit, tmp_path, demo_snapshot, "six==1.0\n", "--index", url) == 2
    assert url in capsys.readouterr().err


# --- refresh ----------------------------------------------------------------------------

ADVISORY_YAML = """\
id: PYSEC-2099-1
modified: 2099-01-02T00:00:00Z
aliases:
- CVE-2099-1
details: "A long\\n  description   that becomes the summary."
references:
- type: WEB
  url: https://example.invalid
affected:
- package:
    name: Six
    ecosystem: PyPI
  ranges:
  - type: GIT
    repo: https://example.invalid/six
    events:
    - introduced: "0"
  - type: ECOSYSTEM
    events:
    - introduced: "0"
    - fixed: 1.10
  versions:
  - 1.9
- package:
    name: not-installed-here
    ecosystem: PyPI
  ranges:
  - type: ECOSYSTEM
    events:
    - introduced: "0"
"""


def test_refresh_builds_a_snapshot_the_audit_reads(
    audit: ModuleType, refresh: ModuleType, tmp_path: Path
) -> None:
    checkout = tmp_path / "db"
    (checkout / "vulns" / "six").mkdir(parents=True)
    (checkout / "vulns" / "six" / "PYSEC-2099-1.yaml").write_text(ADVISORY_YAML)
    git = ["git", "-C", str(checkout), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(checkout)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    pins = tmp_path / "pins.txt"
    pins.write_text("extra-pin==1.0\n")
    out = tmp_path / "snap.json"

    assert refresh.main([str(checkout), "-r", str(pins), "-o", str(out)]) == 0

    data = json.loads(out.read_text())
    assert data["source"]["repository"] == refresh.UPSTREAM
    assert len(data["source"]["commit"]) == 40
    assert "CC-BY-4.0" in data["source"]["licence"]
    packages = data["packages"]
    # every installed distribution and every pin is covered, most with no advisory
    assert "pytest" in packages and packages["extra-pin"] == []
    assert "not-installed-here" not in packages
    [six] = packages["six"]
    assert six == {
        "id": "PYSEC-2099-1",
        "aliases": ["CVE-2099-1"],
        "modified": "2099-01-02T00:00:00Z",  # as written, not a datetime
        "summary": "A long description that becomes the summary.",
        "affected": [
            {
                "package": {"ecosystem": "PyPI", "name": "Six"},
                # the GIT range dropped; unquoted 1.10 stays "1.10", not the float 1.1
                "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1.10"}]}],
                "versions": ["1.9"],
            }
        ],
    }  # fmt: skip
    snapshot = audit.Snapshot.load(out)
    findings, _ = audit.audit({"six": "1.9.1"}, snapshot)
    assert [(f.id, f.fixed) for f in findings] == [("PYSEC-2099-1", ("1.10",))]
    assert audit.audit({"six": "1.10.0"}, snapshot)[0] == []


# --- the real snapshot and this environment ---------------------------------------------


@pytest.fixture(scope="module")
def real_snapshot(audit: ModuleType) -> Any:
    return audit.Snapshot.load(audit.DEFAULT_SNAPSHOT)


def test_real_snapshot_known_answers(audit: ModuleType, real_snapshot: Any) -> None:
    """Advisories with well-known fixes, found by id, alias and fixed release."""
    findings, _ = audit.audit(
        {"requests": "2.19.0", "urllib3": "1.24.1", "Jinja2": "3.1.4", "requests-x": "1"},
        real_snapshot,
    )
    seen = {(f.package, alias): f.fixed for f in findings for alias in f.aliases}
    assert seen[("requests", "CVE-2018-18074")] == ("2.20.0",)
    assert seen[("requests", "CVE-2023-32681")] == ("2.31.0",)
    assert seen[("urllib3", "CVE-2019-11324")] == ("1.24.2",)
    assert seen[("urllib3", "CVE-2023-43804")] == ("1.26.17", "2.0.6")
    assert seen[("Jinja2", "CVE-2024-56201")] == ("3.1.5",)
    later, _ = audit.audit({"requests": "2.20.0", "urllib3": "1.24.2"}, real_snapshot)
    assert not {a for f in later for a in f.aliases} & {"CVE-2018-18074", "CVE-2019-11324"}


def test_real_snapshot_ranges_agree_with_its_versions_lists(
    audit: ModuleType, real_snapshot: Any
) -> None:
    """Every release a record lists as affected lies in that record's ranges: the range
    evaluation reads the database the way its authors wrote it."""
    checked = 0
    for records in real_snapshot.packages.values():
        for rec in records:
            for entry in rec["affected"]:
                for listed in entry.get("versions", []) if entry.get("ranges") else []:
                    version = audit.parse_version(listed)
                    if version is None:
                        continue
                    checked += 1
                    assert any(audit.in_range(version, r["events"]) for r in entry["ranges"]), (
                        rec["id"],
                        listed,
                    )
    assert checked > 10_000


def test_this_environment_passes_the_audit(
    audit: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real run, offline: every distribution of this venv is covered by the vendored
    snapshot and each finding is fixed or accepted in deploy/audit-allowlist.toml. On
    failure: the printed lines say which, and deploy/advisories/README.md how to refresh."""
    status = audit.main([])
    out = capsys.readouterr().out
    assert status == 0, out
    assert f"{len(audit.installed_distributions())} distributions against" in out
