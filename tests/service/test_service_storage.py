"""Run storage settings of the service: checked at start, turned into each job's
environment without any credential, and the credentials given to the Ray head's own
environment instead (where a job's workers find them, and Ray's job API does not)."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from alto_client.runstorage import ENDPOINT_ENV, JOB_ENV_NAMES, REGION_ENV, STORAGE_ENV
from fastapi.testclient import TestClient
from pydantic import ValidationError
from svc_fakes import FakeCluster, tiny_spec

from service.app import create_app
from service.auth import issue_token
from service.cluster import RayJobsBackend
from service.localray import LocalRayHead
from service.settings import Settings

KEY_ID = "AKIAALTOSERVICETEST01"
SECRET = "svc-secret-0f1e2d3c4b5a69788796a5b4"
STORAGE = {
    "run_storage": "s3://alto-runs/service-a/",
    "s3_endpoint_url": "http://127.0.0.1:9000",
    "s3_region": "us-east-1",
    "s3_access_key_id": KEY_ID,
    "s3_secret_access_key": SECRET,
}


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in STORAGE.items():
        monkeypatch.setenv(f"ALTO_{name.upper()}", value)
    s = Settings(data_dir=tmp_path)
    assert s.run_storage == "s3://alto-runs/service-a"
    env = s.job_env("alice")
    assert {k: env[k] for k in JOB_ENV_NAMES} == {
        STORAGE_ENV: "s3://alto-runs/service-a",
        ENDPOINT_ENV: "http://127.0.0.1:9000",
        REGION_ENV: "us-east-1",
    }
    assert SECRET not in json.dumps(env) and KEY_ID not in json.dumps(env)
    assert s.node_env() == {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}
    assert SECRET not in repr(s) and SECRET not in s.model_dump_json()
    for name in STORAGE:
        monkeypatch.delenv(f"ALTO_{name.upper()}")
    plain = Settings(data_dir=tmp_path)
    assert STORAGE_ENV not in plain.job_env("alice") and plain.node_env() == {}


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"run_storage": "/mnt/runs"}, "run_storage"),
        ({"run_storage": "s3://alto-runs/../x"}, "run_storage"),
        ({"run_storage": "s3://k:s@alto-runs/x"}, "run_storage"),
        ({"run_storage": "s3://alto-runs", "s3_endpoint_url": "minio:9000"}, "s3_endpoint_url"),
        ({"s3_endpoint_url": "http://127.0.0.1:9000"}, "set without run_storage"),
        ({"s3_access_key_id": KEY_ID, "s3_secret_access_key": SECRET}, "without run_storage"),
        ({"run_storage": "s3://alto-runs", "s3_access_key_id": KEY_ID}, "go together"),
        ({"run_storage": "s3://alto-runs", "s3_region": "Mars 1"}, "s3_region"),
    ],
)
def test_bad_storage_settings_are_refused_by_name(
    overrides: dict, needle: str, tmp_path: Path
) -> None:
    with pytest.raises(ValidationError) as err:
        Settings(data_dir=tmp_path, **overrides)
    assert needle in str(err.value)
    assert SECRET not in str(err.value)


def test_submitted_job_gets_where_but_never_the_key(tmp_path: Path, settings_factory) -> None:
    """Through the scheduler: the job's env_vars (what Ray's job API would store and
    serve) name the storage and hold no credential; a spec cannot name storage."""
    cluster = FakeCluster(nodes=[{"CPU": 2.0}])
    settings = settings_factory("sqlite", tmp_path, **STORAGE)
    app = create_app(settings, backend=cluster, start_scheduler=False)
    alice = {"Authorization": f"Bearer {issue_token(app.state.svc.factory, 'alice')}"}
    with TestClient(app) as client:
        for field in ("storage", "storage_path"):
            r = client.post("/v1/jobs", json={**tiny_spec(), field: "s3://x/y"}, headers=alice)
            assert r.status_code == 422 and field in r.text, r.text
        r = client.post("/v1/jobs", json=tiny_spec(checkpoint_uri="s3://x/y"), headers=alice)
        assert r.status_code == 422 and "training.checkpoint_uri" in r.text, r.text
        r = client.post("/v1/jobs", json=tiny_spec(), headers=alice)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        app.state.svc.scheduler.run_once()
    job = cluster.jobs[f"alto-{job_id}"]
    assert job.env[STORAGE_ENV] == "s3://alto-runs/service-a"
    assert job.env[ENDPOINT_ENV] == "http://127.0.0.1:9000"
    assert SECRET not in json.dumps(job.env) and KEY_ID not in json.dumps(job.env)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_local_head_gives_jobs_the_key_that_ray_job_info_never_shows() -> None:
    """A real local head started as `serve` starts it: the credentials in the head's
    environment reach the job's processes; Ray's job info, job list and the job's log
    hold none of them (the job carries only the non-secret settings)."""
    settings = Settings(data_dir=Path(tempfile.gettempdir()), **STORAGE)
    data = Path(tempfile.mkdtemp(prefix="lrs-", dir="/tmp"))
    head = LocalRayHead(
        num_cpus=1, data_dir=data, log_path=data / "head.log", node_env=settings.node_env()
    )
    try:
        head.start()
        backend = RayJobsBackend(head.dashboard_url, head.auth_token)
        code = (
            "import os, hashlib; "
            "k = os.environ.get('AWS_SECRET_ACCESS_KEY', ''); "
            "print('key-sha=' + hashlib.sha256(k.encode()).hexdigest()[:16]); "
            f"print('storage=' + os.environ['{STORAGE_ENV}'])"
        )
        backend.submit("alto-storage-env", f'python -c "{code}"', settings.job_env("alice"))
        deadline = time.monotonic() + 180
        while (state := backend.state("alto-storage-env")).status not in (
            "SUCCEEDED",
            "FAILED",
            "STOPPED",
        ):
            assert time.monotonic() < deadline, state
            time.sleep(0.5)
        logs = backend.logs("alto-storage-env")
        assert state.status == "SUCCEEDED", logs
        assert f"key-sha={hashlib.sha256(SECRET.encode()).hexdigest()[:16]}" in logs, logs
        assert "storage=s3://alto-runs/service-a" in logs
        auth = {"Authorization": f"Bearer {head.auth_token}"}
        info = httpx.get(f"{head.dashboard_url}/api/jobs/alto-storage-env", headers=auth).text
        listing = httpx.get(f"{head.dashboard_url}/api/jobs/", headers=auth).text
        assert "s3://alto-runs/service-a" in info  # the env_vars are there, in clear
        for text in (info, listing, logs):
            assert SECRET not in text and KEY_ID not in text
        # nor in any log Ray wrote for the job (the runtime-env agent logs job env vars)
        leaked = [
            str(p)
            for p in (head.temp_dir or data).rglob("*.log")
            if p.is_file() and SECRET.encode() in p.read_bytes()
        ]
        assert not leaked, leaked
        backend.close()
    finally:
        head.stop()
        shutil.rmtree(data, ignore_errors=True)
