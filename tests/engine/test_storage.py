"""Run storage on an object store: settings, bad inputs, the filesystem and the spool's
copy, against a real S3-compatible server (moto) on loopback. No Ray here; the
kill-and-resume run on s3:// is in test_e2e_ray.py."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from alto_client.runstorage import (
    ENDPOINT_ENV,
    REGION_ENV,
    STORAGE_ENV,
    RunStorageConfig,
    StorageConfigError,
)
from alto_client.spec import JobSpec, SpecError
from moto_s3 import SECRET_KEY, moto_s3, node_credentials

from engine.launch import fault_from_env, launch, storage_config
from engine.reporting import METRICS_FILE, MetricLog, points_at
from engine.storage import ObjectSpool, check_reachable, filesystem, job_key, last_step


def test_uri_endpoint_and_region_parse() -> None:
    cfg = RunStorageConfig.from_env(
        {
            STORAGE_ENV: "s3://alto-runs/team-a/ckpt/",
            ENDPOINT_ENV: "http://127.0.0.1:9000/",
            REGION_ENV: "us-east-1",
        }
    )
    assert (cfg.bucket, cfg.prefix) == ("alto-runs", "team-a/ckpt")
    assert cfg.endpoint_url == "http://127.0.0.1:9000"
    assert cfg.job_uri("job-1") == "s3://alto-runs/team-a/ckpt/job-1"
    assert cfg.to_env() == {
        STORAGE_ENV: "s3://alto-runs/team-a/ckpt",
        ENDPOINT_ENV: "http://127.0.0.1:9000",
        REGION_ENV: "us-east-1",
    }
    assert RunStorageConfig.from_env({}) is None
    assert RunStorageConfig.parse("s3://bucket").job_path("j") == "bucket/j"


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({STORAGE_ENV: "/mnt/shared/runs"}, "must be an s3://bucket/prefix URI"),
        ({STORAGE_ENV: "gs://bucket/p"}, "S3 interoperability endpoint"),
        ({STORAGE_ENV: "s3://Bad_Bucket/p"}, "not a valid S3 bucket name"),
        ({STORAGE_ENV: "s3://bucket/a/../b"}, "prefix segment '..'"),
        ({STORAGE_ENV: "s3://bucket//x"}, "prefix segment ''"),
        ({STORAGE_ENV: "s3://key:secret@bucket/p"}, "no query, fragment, credentials"),
        ({STORAGE_ENV: "s3://bucket/p?endpoint_override=x"}, "no query"),
        ({STORAGE_ENV: "s3://bucket/p", ENDPOINT_ENV: "127.0.0.1:9000"}, "http://host"),
        ({STORAGE_ENV: "s3://bucket/p", ENDPOINT_ENV: "ftp://h"}, "http://host"),
        ({STORAGE_ENV: "s3://bucket/p", ENDPOINT_ENV: "http://a:b@h:1"}, "not carry credentials"),
        ({STORAGE_ENV: "s3://bucket/p", ENDPOINT_ENV: "http://h:1/bucket"}, "without a path"),
        ({STORAGE_ENV: "s3://bucket/p", REGION_ENV: "US East"}, "not a region name"),
        ({ENDPOINT_ENV: "http://127.0.0.1:9000"}, f"is set but {STORAGE_ENV} is not"),
    ],
)
def test_bad_settings_are_refused_by_name(env: dict[str, str], needle: str) -> None:
    with pytest.raises(StorageConfigError) as err:
        RunStorageConfig.from_env(env)
    assert needle in str(err.value)
    named = [n for n in (STORAGE_ENV, ENDPOINT_ENV, REGION_ENV) if n in str(err.value)]
    assert named, f"no setting named in {err.value}"


@pytest.mark.parametrize("field", ["storage", "storage_path", "checkpoint_uri"])
def test_a_spec_cannot_choose_storage(field: str) -> None:
    with pytest.raises(SpecError) as err:
        JobSpec.from_dict({"name": "x", field: "s3://elsewhere/p"})
    assert field in str(err.value)
    with pytest.raises(SpecError) as err:
        JobSpec.from_dict({"name": "x", "training": {field: "s3://elsewhere/p"}})
    assert f"training.{field}" in str(err.value)


def test_job_key_stays_one_segment(tmp_path: Path) -> None:
    spec = JobSpec.from_dict({"name": "x"})
    assert job_key(spec, tmp_path / "my run (2)") == "my-run--2-"
    assert job_key(spec, tmp_path / "..") not in ("", ".", "..")
    evil = JobSpec.from_dict(
        {"name": "x", "report": {"url": "http://h", "job_id": "../other", "token": "t"}}
    )
    with pytest.raises(StorageConfigError, match="cannot name a storage prefix"):
        job_key(evil, tmp_path / "x")


def test_filesystem_pickles_without_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray pickles storage_filesystem into its controller and workers: no key goes along."""
    for name, value in node_credentials().items():
        monkeypatch.setenv(name, value)
    fs = filesystem(RunStorageConfig.parse("s3://bkt/p", "http://127.0.0.1:1", "us-east-1"))
    blob = pickle.dumps(fs)
    assert SECRET_KEY.encode() not in blob and b"127.0.0.1:1" in blob


def test_fault_spec_with_wipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALTO_ENGINE_FAULT", "4:1:wipe")
    fault = fault_from_env(tmp_path)
    assert (fault["step"], fault["rank"]) == (4, 1)
    assert fault["wipe"] == [str(tmp_path / METRICS_FILE), str(tmp_path / "report.offset")]
    monkeypatch.setenv("ALTO_ENGINE_FAULT", "4:1:boom")
    with pytest.raises(ValueError, match="unknown mode"):
        fault_from_env(tmp_path)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory):
    with moto_s3(log_path=tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture
def s3_env(s3, monkeypatch: pytest.MonkeyPatch) -> RunStorageConfig:
    for name, value in node_credentials().items():
        monkeypatch.setenv(name, value)
    return RunStorageConfig.parse(f"s3://{s3.bucket}/unit", s3.endpoint_url, "us-east-1")


def test_spool_segments_rebuild_the_spool_byte_for_byte(s3, s3_env, tmp_path: Path) -> None:
    log = MetricLog(tmp_path)
    spool = ObjectSpool(filesystem(s3_env), s3_env.job_path("spool-job"))
    offset = 0
    for step in range(1, 8):
        log.write(points_at(step, {"train/loss": 5.0 - step / 10, "train/lr": 0.1}, now=1.0))
        if step % 3 == 0:
            data = log.path.read_bytes()
            spool.save_segment(step, data[offset:])
            offset = len(data)
    full = log.path.read_bytes()
    # a later checkpoint's segment that never got registered: ignored by a resume at 6
    spool.save_segment(9, b'{"step": 9, "name": "x", "value": 1.0, "time": 1.0}\n')
    log.truncate_after(6)
    assert spool.restore(6) == log.path.read_bytes() == full[:offset]
    assert last_step(log.path) == 6
    assert spool.restore(3) == b"".join(full.splitlines(keepends=True)[:6])
    keys = s3.keys("unit/spool-job/spool/")
    assert keys == [f"unit/spool-job/spool/metrics-{s:010d}.jsonl" for s in (3, 6, 9)]
    assert ObjectSpool(spool.fs, s3_env.job_path("nothing-here")).restore(6) == b""


def test_storage_config_points_ray_at_the_job_prefix(s3, s3_env, tmp_path: Path) -> None:
    spec = JobSpec.from_dict(
        {"name": "x", "report": {"url": "http://h", "job_id": "job-42", "token": "t"}}
    )
    args, view = storage_config(spec, tmp_path / "job-42", s3_env)
    assert args["storage_path"] == f"{s3.bucket}/unit/job-42" == view["job_path"]
    assert args["storage_filesystem"].type_name == "s3"
    assert json.loads(json.dumps(view)) == view  # plain data for train_loop_config
    assert SECRET_KEY not in json.dumps(view)
    args, view = storage_config(spec, tmp_path / "job-42", None)
    assert args == {"storage_path": str(tmp_path / "job-42" / "ray")} and view is None


def test_missing_bucket_or_dead_endpoint_fails_the_run_at_once(
    s3, s3_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = RunStorageConfig.parse("s3://no-such-bucket/p", s3.endpoint_url, "us-east-1")
    with pytest.raises(StorageConfigError, match="bucket 'no-such-bucket' does not exist"):
        check_reachable(missing)
    # through launch(): the environment names a store nobody listens on
    monkeypatch.setenv(STORAGE_ENV, "s3://alto-runs/p")
    monkeypatch.setenv(ENDPOINT_ENV, "http://127.0.0.1:9")  # discard port: refused
    monkeypatch.setenv("ALTO_CACHE_DIR", str(tmp_path / "cache"))
    spec = JobSpec.from_dict(
        {
            "name": "x",
            "model": {"num_layers": 1, "hidden_size": 32, "num_attention_heads": 2},
            "data": {"source": "python-stdlib", "max_bytes": 50_000},
            "training": {"steps": 1, "global_batch_size": 2, "micro_batch_size": 1},
        }
    )
    result = launch(spec, tmp_path / "run", start_ray=False)
    assert not result.ok and "run storage s3://alto-runs/p: cannot reach it" in result.error
    monkeypatch.setenv(STORAGE_ENV, "file:///tmp/x")
    result = launch(spec, tmp_path / "run", start_ray=False)
    assert not result.ok and STORAGE_ENV in result.error
