"""Shared fixtures for the deployment checks: the repository's deploy/ tools as modules
and the parsed deployment files."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def _load(name: str, path: Path) -> ModuleType:
    """Import a script from deploy/ (not a package: it must run before anything is installed)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def validate() -> ModuleType:
    return _load("alto_deploy_validate", DEPLOY / "validate.py")


@pytest.fixture(scope="session")
def requirements_tool() -> ModuleType:
    return _load("alto_deploy_requirements", DEPLOY / "requirements.py")


@pytest.fixture(scope="session")
def crd_dir(validate: ModuleType) -> Path:
    """The KubeRay CRDs; CI lays the project's shared/ beside the clone. Missing is a
    failure, not a skip: without them the RayCluster/RayJob checks would not run."""
    path = Path(os.environ.get("ALTO_KUBERAY_CRDS", validate.DEFAULT_CRD_DIR))
    if not path.is_dir():
        pytest.fail(f"KubeRay CRDs not found at {path}; set ALTO_KUBERAY_CRDS")
    return path


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="session")
def manifests() -> dict[str, dict[str, Any]]:
    """Every Kubernetes object under deploy/k8s, keyed "Kind/name"."""
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "k8s").rglob("*.yaml")):
        for doc in _docs(path):
            key = f"{doc['kind']}/{doc['metadata']['name']}"
            assert key not in objects, f"{key} defined twice (again in {path})"
            objects[key] = doc
    return objects


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    (doc,) = _docs(DEPLOY / "compose.yaml")
    return doc


@pytest.fixture(scope="session")
def audit() -> ModuleType:
    """deploy/audit.py, imported as `audit` (audit_refresh.py imports it by that name)."""
    return _load("audit", DEPLOY / "audit.py")


@pytest.fixture(scope="session")
def refresh(audit: ModuleType) -> ModuleType:
    return _load("alto_deploy_audit_refresh", DEPLOY / "audit_refresh.py")
