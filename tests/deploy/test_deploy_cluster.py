"""The cluster wiring of deploy/compose.yaml and the KubeRay manifests, without containers.

A Ray head started the cluster way (`ray start --head`, no CPUs of its own, token auth)
and a second Ray node joining it with `ray start --address`, PostgreSQL, and the real
service started with the image's command (`alto serve`) and configured only through the
environment the manifests set (ALTO_DATABASE_URL, ALTO_RAY_ADDRESS, ALTO_ADMIN_TOKEN,
RAY_AUTH_TOKEN; ALTO_RUNS_DIR/ALTO_CACHE_DIR on the Ray nodes). A tiny job goes in
through the `alto` CLI, must run on the worker node (the head has no CPUs), post its
metrics back to the service and finish SUCCEEDED.

Every process this test starts runs in its own process group and under its own Ray temp
directory; teardown ends those groups and then any process still naming that directory,
by pid. It never runs `ray stop`, which would end every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from service.localray import free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
JOB_DEADLINE_S = 360.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _node_ports() -> list[str]:
    """Explicit ports for everything a Ray node listens on, so two nodes on one machine
    (and other Ray instances on it) never collide on the fixed defaults."""
    return [
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
    ]


@dataclass
class Started:
    """A process this test started, in its own process group, with its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, chars: int = 4000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} ({self.log}) ---\n{text[-chars:]}"

    def stop(self, grace_s: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def _start(name: str, argv: list[str], env: dict[str, str], logs: Path) -> Started:
    log = logs / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return Started(name, proc, log)


def _kill_leftovers(marker: str) -> list[int]:
    """End, by pid, processes whose command line names `marker` (our Ray temp dir):
    Ray daemons that outlived their process group. Returns the pids it ended."""
    ended = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if proc.pid != os.getpid() and any(
                marker in part for part in proc.info["cmdline"] or []
            ):
                proc.kill()
                ended.append(proc.pid)
    return ended


def _wait(what: str, check: Any, timeout_s: float, procs: list[Started]) -> Any:
    """Poll `check()` until it returns something truthy; fail with the logs otherwise."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        for started in procs:
            if started.proc.poll() is not None:
                pytest.fail(
                    f"{started.name} exited with {started.proc.returncode} while waiting for "
                    f"{what}\n{started.tail()}"
                )
        try:
            result = check()
            if result:
                return result
            last = result
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(1.0)
    pytest.fail(
        f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last!r})\n"
        + "\n".join(p.tail() for p in procs)
    )


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the test PostgreSQL server (.ci/postgres.sh), dropped after."""
    base = os.environ.get("ALTO_TEST_POSTGRES_URL")
    if not base:
        if os.environ.get("CI"):
            pytest.fail("ALTO_TEST_POSTGRES_URL is not set: .ci/run must start .ci/postgres.sh")
        pytest.skip('no PostgreSQL: run `eval "$(.ci/postgres.sh)"` first')
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(base)
    name = f"alto_deploy_{secrets.token_hex(4)}"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def workdir() -> Iterator[Path]:
    # short and under /tmp: Ray puts unix sockets under its temp dir (108-byte path limit)
    path = Path(tempfile.mkdtemp(prefix="altodeploy-", dir="/tmp"))
    try:
        yield path
    finally:
        _kill_leftovers(str(path))
        shutil.rmtree(path, ignore_errors=True)


def _tiny_spec(path: Path) -> Path:
    """A job small enough for a loaded 2-core machine, through the full engine path."""
    spec = {
        "name": "deploy-wiring",
        "tags": ["deploy-test"],
        "model": {
            "num_layers": 1,
            "hidden_size": 64,
            "num_attention_heads": 2,
            "ffn_hidden_size": 128,
            "seq_length": 64,
            "num_experts": 2,
            "moe_router_topk": 2,
        },
        "data": {"source": "python-stdlib", "max_bytes": 300_000, "tokenizer": {"kind": "byte"}},
        "resources": {"workers": 1, "device": "cpu", "cpus_per_worker": 1.0, "max_failures": 0},
        "training": {
            "steps": 4,
            "global_batch_size": 4,
            "micro_batch_size": 4,
            "eval_interval": 0,
            "eval_batches": 1,
        },
        "optimizer": {"name": "alto"},
    }
    path.write_text(json.dumps(spec))
    return path


def test_service_runs_a_job_on_a_separate_ray_worker_node(postgres_url: str, workdir: Path) -> None:
    logs = workdir / "logs"
    logs.mkdir()
    ray_token = secrets.token_hex(32)
    admin_token = secrets.token_hex(32)
    gcs_port, dashboard_port, service_port = free_port(), free_port(), free_port()
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    ray_headers = {"Authorization": f"Bearer {ray_token}"}
    runs_dir, cache_dir = workdir / "shared" / "runs", workdir / "shared" / "cache"

    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "ALTO_"))}
    base_env["PATH"] = f"{BIN}{os.pathsep}{base_env.get('PATH', '')}"  # `python` = this venv
    ray_env = {
        **base_env,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": ray_token,
        "ALTO_RUNS_DIR": str(runs_dir),
        "ALTO_CACHE_DIR": str(cache_dir),
    }
    ray = str(BIN / "ray")
    common = [f"--temp-dir={workdir / 'ray'}", "--node-ip-address=127.0.0.1", "--block"]
    common.append("--disable-usage-stats")
    started: list[Started] = []
    try:
        head = _start(
            "ray-head",
            [
                ray,
                "start",
                "--head",
                f"--port={gcs_port}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard_port}",
                f"--ray-client-server-port={free_port()}",
                "--num-cpus=0",  # like the KubeRay head: drivers only, no training
                *common,
                *_node_ports(),
            ],
            ray_env,
            logs,
        )
        started.append(head)

        def nodes() -> list[dict[str, Any]]:
            r = httpx.get(f"{dashboard}/api/v0/nodes", headers=ray_headers, timeout=10)
            r.raise_for_status()
            return [n for n in r.json()["data"]["result"]["result"] if n["state"] == "ALIVE"]

        t0 = time.monotonic()
        _wait("the Ray head's job API", nodes, 180, started)
        phases = {"ray head up": time.monotonic() - t0}
        # the job API refuses callers without the cluster token
        assert httpx.get(f"{dashboard}/api/jobs/", timeout=10).status_code in (401, 403)

        worker = _start(
            "ray-worker",
            [
                ray,
                "start",
                f"--address=127.0.0.1:{gcs_port}",
                "--num-cpus=2",
                *common,
                *_node_ports(),
            ],
            ray_env,
            logs,
        )
        started.append(worker)
        t0 = time.monotonic()
        _wait("the worker node to join", lambda: len(nodes()) == 2, 120, started)
        phases["worker joined"] = time.monotonic() - t0

        service_env = {
            **base_env,
            "ALTO_DATABASE_URL": postgres_url,
            "ALTO_RAY_ADDRESS": dashboard,
            "ALTO_ADMIN_TOKEN": admin_token,
            "ALTO_DATA_DIR": str(workdir / "service"),
            "ALTO_PUBLIC_URL": f"http://127.0.0.1:{service_port}",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": ray_token,
        }
        service = _start(
            "service",
            [str(BIN / "alto"), "serve", "--host", "127.0.0.1", "--port", str(service_port)],
            service_env,
            logs,
        )
        started.append(service)
        url = f"http://127.0.0.1:{service_port}"

        def ready() -> bool:
            return httpx.get(f"{url}/readyz", timeout=10).status_code == 200

        t0 = time.monotonic()
        _wait("the service to be ready (database and Ray reachable)", ready, 120, started)
        phases["service ready"] = time.monotonic() - t0
        t0 = time.monotonic()

        # the laptop side: the CLI with ALTO_URL and ALTO_TOKEN, as docs/deploy.md says
        cli_env = {**base_env, "ALTO_URL": url, "ALTO_TOKEN": admin_token}
        submitted = subprocess.run(
            [str(BIN / "alto"), "submit", str(_tiny_spec(workdir / "spec.json")), "--json"],
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        job_id = json.loads(submitted.stdout)["id"]
        auth = {"Authorization": f"Bearer {admin_token}"}

        def finished() -> dict[str, Any] | None:
            job = httpx.get(f"{url}/v1/jobs/{job_id}", headers=auth, timeout=10).json()
            return job if job["status"] in ("SUCCEEDED", "FAILED", "CANCELLED") else None

        job = _wait(f"job {job_id} to finish", finished, JOB_DEADLINE_S, started)
        phases["job submitted to finished"] = time.monotonic() - t0
        if job["status"] != "SUCCEEDED":
            driver = httpx.get(f"{url}/v1/jobs/{job_id}/logs", headers=auth, timeout=10).text
            pytest.fail(
                f"job ended {job['status']}: {job.get('status_reason')}\n--- driver log ---\n"
                f"{driver[-6000:]}"
            )

        # the service's job is the Ray job that ran on this cluster
        ray_job = httpx.get(
            f"{dashboard}/api/jobs/{job['ray_job_id']}", headers=ray_headers, timeout=10
        )
        assert ray_job.status_code == 200 and ray_job.json()["status"] == "SUCCEEDED"
        # the engine posted its metrics back to the service's public URL: every step once
        history = httpx.get(
            f"{url}/v1/jobs/{job_id}/metrics",
            params={"names": "train/loss"},
            headers=auth,
            timeout=10,
        ).json()
        (loss,) = [s for s in history["series"] if s["name"] == "train/loss"]
        assert len(loss["steps"]) == 4 and len(set(loss["steps"])) == 4, loss["steps"]
        assert all(v is not None for v in loss["values"])
        # the training worker ran on the worker node: the head has no CPUs to give
        head_ids = {n["node_id"] for n in nodes() if n["is_head_node"]}
        actors = httpx.get(
            f"{dashboard}/api/v0/actors", params={"limit": 1000}, headers=ray_headers, timeout=10
        ).json()["data"]["result"]["result"]
        train_nodes = {a["node_id"] for a in actors if a["class_name"] == "RayTrainWorker"}
        assert train_nodes and not (train_nodes & head_ids), (train_nodes, head_ids)
        # the run directory went where the Ray nodes' ALTO_RUNS_DIR points (shared storage)
        assert (runs_dir / job_id).is_dir(), sorted(p.name for p in runs_dir.glob("*"))
        print("phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))
    finally:
        for process in reversed(started):
            process.stop()
        # Ray daemons that outlived their `ray start --block` group, by pid
        leftovers = _kill_leftovers(str(workdir))
        if leftovers:
            print(f"ended leftover Ray processes by pid: {leftovers}")
