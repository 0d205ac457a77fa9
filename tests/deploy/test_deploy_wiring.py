"""The deployment files agree with each other and with the code they run: names,
ports, secrets, settings, volumes, and the presets' resource requests."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from alto_client.spec import JobSpec

from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "deploy.md"
RAY_AUTH = ("alto-ray-auth", "auth_token")


def _containers(manifests: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(where, container) for every container of every pod template in the manifests."""
    out = []
    cluster = manifests["RayCluster/alto-ray"]["spec"]
    out += [("head", c) for c in cluster["headGroupSpec"]["template"]["spec"]["containers"]]
    for group in cluster["workerGroupSpecs"]:
        out += [(group["groupName"], c) for c in group["template"]["spec"]["containers"]]
    job = manifests["RayJob/alto-gpt2-345m"]["spec"]
    out += [("submitter", c) for c in job["submitterPodTemplate"]["spec"]["containers"]]
    deployment = manifests["Deployment/alto-service"]["spec"]["template"]["spec"]
    out += [("service", c) for c in deployment["containers"]]
    return out


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def _secret_ref(value: Any) -> tuple[str, str] | None:
    if isinstance(value, dict) and "secretKeyRef" in value:
        ref = value["secretKeyRef"]
        return ref["name"], ref["key"]
    return None


# --------------------------------------------------------------------------- Kubernetes


def test_every_ray_container_and_the_service_use_the_same_ray_token(manifests: dict) -> None:
    for where, container in _containers(manifests):
        env = _env(container)
        assert env.get("RAY_AUTH_MODE") == "token", where
        assert _secret_ref(env.get("RAY_AUTH_TOKEN")) == RAY_AUTH, where


def test_ray_images_are_one_image_and_the_service_has_its_own(manifests: dict) -> None:
    images = {where: c["image"] for where, c in _containers(manifests)}
    service = images.pop("service")
    assert len(set(images.values())) == 1, images
    assert service != next(iter(images.values()))


def test_gpu_workers_ask_for_gpus_shm_and_shared_storage(manifests: dict) -> None:
    cluster = manifests["RayCluster/alto-ray"]["spec"]
    (gpu,) = [g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu"]
    pod = gpu["template"]["spec"]
    (container,) = pod["containers"]
    resources = container["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    for spec in (pod, cluster["headGroupSpec"]["template"]["spec"]):
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        claim = volumes[mounts["/mnt/alto"]]["persistentVolumeClaim"]["claimName"]
        pvc = manifests[f"PersistentVolumeClaim/{claim}"]
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "every node must write it"


def test_head_runs_no_training_workers(manifests: dict) -> None:
    head = manifests["RayCluster/alto-ray"]["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_service_points_at_the_kuberay_head_service_and_itself(manifests: dict) -> None:
    cluster = manifests["RayCluster/alto-ray"]
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    dashboard = {p["name"]: p["containerPort"] for p in head["ports"]}["dashboard"]
    (container,) = manifests["Deployment/alto-service"]["spec"]["template"]["spec"]["containers"]
    env = _env(container)
    # KubeRay names the head's Service <cluster>-head-svc
    assert env["ALTO_RAY_ADDRESS"] == f"http://{cluster['metadata']['name']}-head-svc:{dashboard}"
    public = urlsplit(env["ALTO_PUBLIC_URL"])
    service = manifests[f"Service/{public.hostname}"]
    (port,) = service["spec"]["ports"]
    assert (public.port or 80) == port["port"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port["targetPort"] in container_ports
    listen = container["args"][container["args"].index("--port") + 1]
    assert int(listen) == container_ports[port["targetPort"]]
    selector = service["spec"]["selector"]
    labels = manifests["Deployment/alto-service"]["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_service_env_names_are_real_settings(manifests: dict, compose: dict) -> None:
    names = {n for w, c in _containers(manifests) if w == "service" for n in _env(c)}
    names |= set(compose["services"]["service"]["environment"])
    names = {n for n in names if n.startswith("ALTO_")}
    fields = {f"ALTO_{name.upper()}" for name in Settings.model_fields}
    assert names and names <= fields, names - fields


def test_ray_nodes_set_only_variables_the_engine_reads(manifests: dict, compose: dict) -> None:
    engine_source = "\n".join(p.read_text() for p in (REPO / "engine").rglob("*.py"))
    names = {n for w, c in _containers(manifests) if w != "service" for n in _env(c)}
    names |= set(compose["services"]["ray-head"]["environment"])
    names |= set(compose["services"]["ray-worker"]["environment"])
    alto = {n for n in names if n.startswith("ALTO_")}
    assert {"ALTO_RUNS_DIR", "ALTO_CACHE_DIR"} <= alto
    unread = {n for n in alto if f'"{n}"' not in engine_source}
    assert not unread, f"the engine never reads {sorted(unread)}"


def test_ray_nodes_keep_runs_and_cache_on_the_shared_volume(manifests: dict, compose: dict) -> None:
    for where, container in _containers(manifests):
        if where in ("service", "submitter"):
            continue
        env = _env(container)
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        for name in ("ALTO_RUNS_DIR", "ALTO_CACHE_DIR"):
            assert any(env[name].startswith(m + "/") for m in mounts), (where, name)
    for name in ("ray-head", "ray-worker"):
        service = compose["services"][name]
        shared = {v.split(":")[1] for v in service["volumes"] if v.startswith("shared:")}
        for var in ("ALTO_RUNS_DIR", "ALTO_CACHE_DIR"):
            assert any(service["environment"][var].startswith(m + "/") for m in shared)


def test_secrets_are_referenced_never_written(manifests: dict) -> None:
    assert not [key for key in manifests if key.startswith("Secret/")]
    refs = set()
    for _, container in _containers(manifests):
        for value in _env(container).values():
            if _secret_ref(value):
                refs.add(_secret_ref(value))
    assert refs == {RAY_AUTH, ("alto-service", "database-url"), ("alto-service", "admin-token")}
    # and the docs say how to create each of them
    docs = DOCS.read_text()
    for name, key in refs:
        assert re.search(
            rf"kubectl create secret generic {name}\b[^`]*--from-literal={key}=", docs
        ), f"docs/deploy.md does not show how to create secret {name} key {key}"


@pytest.mark.parametrize("preset", ["gpt2-345m", "moe-gpu"])
def test_gpu_presets_fit_the_gpu_worker_group(manifests: dict, preset: str) -> None:
    spec = JobSpec.from_yaml(REPO / "configs" / f"{preset}.yaml")
    gpu = manifests["RayCluster/alto-ray"]["spec"]["workerGroupSpecs"][0]
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    gpus_per_pod, cpus_per_pod = int(limits["nvidia.com/gpu"]), float(limits["cpu"])
    assert spec.resources.device == "gpu"
    # replicas, not maxReplicas: without the autoscaler that is what runs
    assert spec.resources.workers <= gpus_per_pod * gpu["replicas"]
    workers_per_pod = min(spec.resources.workers, gpus_per_pod)
    assert workers_per_pod * spec.resources.cpus_per_worker <= cpus_per_pod


def test_rayjob_runs_a_preset_that_the_image_carries(manifests: dict) -> None:
    job = manifests["RayJob/alto-gpt2-345m"]["spec"]
    argv = shlex.split(job["entrypoint"])
    assert argv[:3] == ["python", "-m", "engine.run"]
    config = Path(argv[3])
    assert config.parent == Path("/opt/alto/configs")  # COPY service/configs /opt/alto/configs
    JobSpec.from_yaml(REPO / "configs" / config.name)
    assert argv[4] == "--out" and argv[5].startswith("/mnt/alto/")
    assert job["clusterSelector"] == {"ray.io/cluster": "alto-ray"}
    assert (
        "COPY service/configs /opt/alto/configs" in (REPO / "deploy/engine.Dockerfile").read_text()
    )


# --------------------------------------------------------------------------- compose


def _flag(command: list[str], name: str) -> str:
    (value,) = [arg.split("=", 1)[1] for arg in command if arg.startswith(f"{name}=")]
    return value


def test_compose_wires_service_ray_and_postgres(compose: dict) -> None:
    services = compose["services"]
    head, worker, service = services["ray-head"], services["ray-worker"], services["service"]
    env = service["environment"]
    ray = urlsplit(env["ALTO_RAY_ADDRESS"])
    assert ray.hostname == "ray-head" and str(ray.port) == _flag(
        head["command"], "--dashboard-port"
    )
    assert _flag(head["command"], "--dashboard-host") == "0.0.0.0"
    assert _flag(worker["command"], "--address") == f"ray-head:{_flag(head['command'], '--port')}"
    # compose interpolates ${VAR:?message} before anyone parses the URL
    database = urlsplit(re.sub(r"\$\{[^}]*\}", "interpolated", env["ALTO_DATABASE_URL"]))
    pg = services["postgres"]["environment"]
    assert database.scheme == "postgresql+psycopg" and database.hostname == "postgres"
    assert database.username == pg["POSTGRES_USER"] and database.path == f"/{pg['POSTGRES_DB']}"
    public = urlsplit(env["ALTO_PUBLIC_URL"])
    command = service["command"]
    assert public.hostname == "service" and str(public.port) == command[command.index("--port") + 1]
    assert command[command.index("--host") + 1] == "0.0.0.0"


def test_compose_secrets_come_from_the_environment(compose: dict) -> None:
    services = compose["services"]
    tokens = {name: s["environment"].get("RAY_AUTH_TOKEN") for name, s in services.items()}
    tokens.pop("postgres")
    assert all(t and t.startswith("${RAY_AUTH_TOKEN:?") for t in tokens.values()), tokens
    assert all(services[n]["environment"]["RAY_AUTH_MODE"] == "token" for n in tokens)
    for value in (
        services["service"]["environment"]["ALTO_ADMIN_TOKEN"],
        services["postgres"]["environment"]["POSTGRES_PASSWORD"],
    ):
        assert value.startswith("${") and ":?" in value, value
    assert "${POSTGRES_PASSWORD:?" in services["service"]["environment"]["ALTO_DATABASE_URL"]


def test_compose_ports_bind_loopback_only(compose: dict) -> None:
    for name, service in compose["services"].items():
        for mapping in service.get("ports", []):
            assert str(mapping).startswith("127.0.0.1:"), f"{name} publishes {mapping}"


def test_compose_and_images_agree_on_the_service_command(compose: dict) -> None:
    dockerfile = (REPO / "deploy/service.Dockerfile").read_text()
    (cmd,) = re.findall(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert eval(cmd) == compose["services"]["service"]["command"]  # a JSON list literal


def test_docs_name_only_files_that_exist() -> None:
    """Every repository path docs/deploy.md tells a user to use is really there."""
    docs = DOCS.read_text()
    paths = set(
        re.findall(
            r"(?<![\w/.-])((?:deploy|configs|docs|\.ci)/[\w./-]+\.(?:yaml|py|md|sh|txt|Dockerfile))",
            docs,
        )
    )
    paths |= set(re.findall(r"(?<![\w/.-])(deploy/k8s)/", docs))
    assert {"deploy/compose.yaml", "configs/gpt2-345m.yaml", "configs/moe-gpu.yaml"} <= paths
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, missing
