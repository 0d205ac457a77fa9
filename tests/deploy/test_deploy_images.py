"""The container images install what the code needs, pinned, and nothing it does not.

No Docker engine here, so these check the inputs of a build: the requirement lists the
Dockerfiles derive from pyproject.toml (deploy/requirements.py), the version pins
(requirements.lock, the project's one lock), what each Dockerfile copies and whether .dockerignore lets it
through, and that the code each image runs imports only what that image installs.
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OUR_PACKAGES = {"alto", "engine", "service", "alto_client"}
# what each image installs: (pyproject, extras, base deps?, excluded) per distribution
IMAGES = {
    "engine": {
        "dockerfile": DEPLOY / "engine.Dockerfile",
        "installs": [
            ("pyproject.toml", ["engine", "gpu"], True),
            ("clients/python/pyproject.toml", ["cli"], True),
        ],
        "extra_requirements": ["torch"],  # installed by its own RUN line (CPU or CUDA build)
        "code": ["engine", "alto", "clients/python/alto_client"],
    },
    "service": {
        "dockerfile": DEPLOY / "service.Dockerfile",
        "installs": [
            ("pyproject.toml", ["service", "postgres"], True),
            ("clients/python/pyproject.toml", ["cli"], True),
        ],
        "extra_requirements": [],
        "code": ["service", "clients/python/alto_client"],
    },
}


# --------------------------------------------------------------------------- requirements.py


def test_requirements_lists_base_and_extras_in_order(
    requirements_tool: ModuleType, tmp_path: Path
) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "x"\ndependencies = ["torch==2.13.0", "numpy>=1.26"]\n'
        "[project.optional-dependencies]\n"
        'a = ["ray[default]==2.60.0", "numpy>=1.26"]\nb = ["Py_Yaml>=6"]\n'
    )
    assert requirements_tool.declared_requirements(pyproject, ["a", "b"]) == [
        "torch==2.13.0",
        "numpy>=1.26",
        "ray[default]==2.60.0",
        "Py_Yaml>=6",
    ]
    assert (
        requirements_tool.declared_requirements(
            pyproject, ["b"], base=False, exclude=frozenset({"py-yaml"})
        )
        == []
    )
    assert requirements_tool.declared_requirements(
        pyproject, ["a"], exclude=frozenset({"TORCH"})
    ) == ["numpy>=1.26", "ray[default]==2.60.0"]


def test_requirements_unknown_extra_fails_naming_the_declared_ones(
    requirements_tool: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert requirements_tool.main([str(REPO / "pyproject.toml"), "enginee"]) == 2
    err = capsys.readouterr().err
    assert "['enginee']" in err and "'engine'" in err


def test_requirements_cli_prints_one_per_line(
    requirements_tool: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        requirements_tool.main([str(REPO / "pyproject.toml"), "engine", "--exclude", "torch"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(line.strip() == line and line for line in lines)
    assert not any(line.startswith("torch") for line in lines)
    assert any(line.startswith("megatron-core") for line in lines)


# --------------------------------------------------------------------------- pins


def _image_requirements(requirements_tool: ModuleType, image: str) -> list[str]:
    spec = IMAGES[image]
    out: list[str] = list(spec["extra_requirements"])
    for pyproject, extras, base in spec["installs"]:
        out += requirements_tool.declared_requirements(
            REPO / pyproject, extras, base=base, exclude=frozenset({"torch", "alto-client"})
        )
    return out


def _lock() -> dict[str, str]:
    """requirements.lock as {name: version}; every line an exact pin."""
    pins: dict[str, str] = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"requirements.lock: {line!r} is not an exact pin (name==version)"
            pins[canonicalize_name(name)] = version.strip()
    return pins


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_every_requirement_is_pinned_and_the_pin_satisfies_it(
    requirements_tool: ModuleType, image: str
) -> None:
    pins = _lock()
    problems = []
    for line in _image_requirements(requirements_tool, image):
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{line}: no pin in requirements.lock")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{line}: pinned to {pins[name]}, which does not satisfy it")
    assert problems == [], "\n".join(problems)


def test_one_lock_for_make_ci_and_both_images() -> None:
    """make installs from requirements.lock; both images constrain with it; nothing else
    pins versions."""
    assert "-r requirements.lock" in (REPO / "Makefile").read_text()
    for image in IMAGES.values():
        text = image["dockerfile"].read_text()
        assert "-c requirements.lock" in text and "constraints.txt" not in text
    assert not (DEPLOY / "constraints.txt").exists()
    pins = _lock()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    torch = next(r for r in project["dependencies"] if Requirement(r).name == "torch")
    assert Requirement(torch).specifier.contains(pins["torch"])
    assert pins["megatron-core"].startswith("0.19.")


def test_torch_and_ray_pins_agree_across_files(compose: dict, manifests: dict) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    torch = next(
        r for r in project["dependencies"] if canonicalize_name(Requirement(r).name) == "torch"
    )
    engine_extra = project["optional-dependencies"]["engine"]
    ray = next(r for r in engine_extra if canonicalize_name(Requirement(r).name) == "ray")
    torch_pin = str(Requirement(torch).specifier).removeprefix("==")
    ray_pin = str(Requirement(ray).specifier).removeprefix("==")
    dockerfile = (DEPLOY / "engine.Dockerfile").read_text()
    assert f"ARG TORCH_VERSION={torch_pin}\n" in dockerfile
    assert manifests["RayCluster/alto-ray"]["spec"]["rayVersion"] == ray_pin


# --------------------------------------------------------------------------- Dockerfiles


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: `**/` any directories, `*` and `?` within one."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] in "*?":
            out, i = out + ("[^/]*" if pattern[i] == "*" else "[^/]"), i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def _ignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore-style `patterns` exclude `relative`: the last matching
    pattern wins, and a pattern that matches a parent directory matches its contents."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern(pattern[1:] if negate else pattern)
        if any(regex.match(candidate) for candidate in candidates):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_dockerfile_copies_existing_paths_that_the_dockerignore_lets_through(image: str) -> None:
    dockerfile = IMAGES[image]["dockerfile"]
    ignore = Path(f"{dockerfile}.dockerignore")
    assert ignore.is_file(), (
        f"{ignore.name} missing: the whole repository (.venv too) would be sent"
    )
    patterns = [
        line.strip()
        for line in ignore.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    problems = []
    for word, args in _instructions(dockerfile):
        if word != "COPY" or "--from=" in args:
            continue
        sources = [a for a in args.split() if not a.startswith("--")][:-1]
        for source in sources:
            if not (REPO / source).exists():
                problems.append(f"COPY {source}: no such path in the repository")
            elif _ignored(source, patterns):
                problems.append(f"COPY {source}: excluded by {ignore.name}")
    assert problems == [], "\n".join(problems)
    # and the context really is small: the virtualenv and git data stay out
    assert _ignored(".venv/lib/python3.11/x.py", patterns)
    assert _ignored(".git/HEAD", patterns)
    assert _ignored("alto/__pycache__/x.pyc", patterns)


def test_dockerignore_matcher() -> None:
    patterns = ["*", "!alto", "!deploy/requirements.py", "**/__pycache__"]
    assert not _ignored("alto/optim.py", patterns)
    assert _ignored("alto/__pycache__/optim.cpython-311.pyc", patterns)
    assert _ignored("deploy/compose.yaml", patterns)
    assert not _ignored("deploy/requirements.py", patterns)
    assert _ignored("tests/x.py", patterns)
    assert not _ignored("tests/x.py", ["*", "!tests/*.py"])
    assert _ignored("a/b/c.pyc", ["**/*.pyc"]) and not _ignored("a/b/c.py", ["**/*.pyc"])


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_final_stage_is_non_root_with_healthcheck_and_pinned_bases(image: str) -> None:
    instructions = _instructions(IMAGES[image]["dockerfile"])
    args = {}
    for word, rest in instructions:
        if word == "FROM":
            break
        if word == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value
    stages: list[str] = []
    final: list[tuple[str, str]] = []
    for word, rest in instructions:
        if word == "FROM":
            ref, *alias = rest.split()
            ref = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], ref)
            if ref not in stages:
                name, _, tag = ref.rpartition(":")
                assert name and tag and tag != "latest", (
                    f"base image {ref!r} is not pinned to a tag"
                )
            stages.append(alias[-1] if alias else ref)
            final = []
        else:
            final.append((word, rest))
    users = [rest for word, rest in final if word == "USER"]
    assert users, "the final stage runs as root (no USER)"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]}: use a numeric non-root uid"
    assert any(word == "HEALTHCHECK" for word, _ in final), "no HEALTHCHECK in the final stage"
    assert any(word == "CMD" for word, _ in final)


# --------------------------------------------------------------------------- imports


def _closure(requirements: list[str]) -> set[str]:
    """Distribution names `requirements` pull in, following installed metadata (extras
    and environment markers included)."""
    seen: dict[str, set[str]] = {}
    todo = [(Requirement(r), {""}) for r in requirements]
    while todo:
        req, parent_extras = todo.pop()
        if req.marker is not None and not any(
            req.marker.evaluate({"extra": e}) for e in parent_extras
        ):
            continue
        name = canonicalize_name(req.name)
        extras = set(req.extras) | {""}
        if name in seen and extras <= seen[name]:
            continue
        seen.setdefault(name, set()).update(extras)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        todo += [(Requirement(line), seen[name]) for line in requires]
    return set(seen)


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Whether an import sits in a try whose handlers catch ImportError (optional)."""
    child, parent = node, parents.get(node)
    while parent is not None:
        if isinstance(parent, ast.Try) and child in parent.body:
            for handler in parent.handlers:
                names = ast.unparse(handler.type) if handler.type else "BaseException"
                if re.search(r"ImportError|ModuleNotFoundError|Exception", names):
                    return True
        child, parent = parent, parents.get(parent)
    return False


def _direct_imports(roots: list[str]) -> dict[str, list[str]]:
    """Top-level module -> files importing it unconditionally, for the code in `roots`."""
    found: dict[str, list[str]] = {}
    for root in roots:
        for path in sorted((REPO / root).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            parents = {
                child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)
            }
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                if _guarded(node, parents):
                    continue
                for name in names:
                    top = name.split(".")[0]
                    found.setdefault(top, []).append(str(path.relative_to(REPO)))
    return found


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_code_imports_only_what_its_image_installs(
    requirements_tool: ModuleType, image: str
) -> None:
    spec = IMAGES[image]
    installed = _closure(_image_requirements(requirements_tool, image))
    owners = metadata.packages_distributions()
    problems = []
    for module, files in sorted(_direct_imports(spec["code"]).items()):
        if module in sys.stdlib_module_names or module in OUR_PACKAGES or module == "__future__":
            continue
        dists = {canonicalize_name(d) for d in owners.get(module, [])}
        if not dists:
            problems.append(f"{module} (imported by {files[0]}) is not installed here at all")
        elif not dists & installed:
            problems.append(
                f"{module} (distribution {sorted(dists)}, imported by {files[0]}) is not among "
                f"the {image} image's requirements: add it to an extra the image installs"
            )
    assert problems == [], "\n".join(problems)


def test_service_imports_without_torch_or_ray() -> None:
    """The service image has neither torch nor ray: every service module must import
    with both absent (the service talks to Ray over HTTP)."""
    script = r"""
import importlib, importlib.abc, json, pkgutil, sys


# torch and ray as the image has them: not installed (a None in sys.modules would also
# block them, but libraries such as scipy read sys.modules["torch"] directly)
class Absent(importlib.abc.MetaPathFinder):

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "ray"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Absent())
import service
failed = {}
for info in pkgutil.walk_packages(service.__path__, "service."):
    if info.name.startswith("service.migrations"):
        continue  # run by alembic inside its own context, not importable standalone
    try:
        importlib.import_module(info.name)
    except Exception as exc:
        failed[info.name] = f"{type(exc).__name__}: {exc}"
print(json.dumps(failed))
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    failed = json.loads(result.stdout.strip().splitlines()[-1])
    assert failed == {}, failed
