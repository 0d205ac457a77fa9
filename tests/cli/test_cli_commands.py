"""The `alto` commands through typer's runner, against a live service."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml
from alto_client.cli import EXIT_UNREACHABLE, app
from alto_client.client import Client
from livesvc import TINY_SPEC, LiveService, free_port
from typer.testing import CliRunner

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def runner(svc: LiveService) -> CliRunner:
    return CliRunner(env={"ALTO_URL": svc.url, "ALTO_TOKEN": svc.admin_token, "COLUMNS": "200"})


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    spec = {**TINY_SPEC, "tags": [*TINY_SPEC["tags"], f"c{uuid.uuid4().hex[:8]}"]}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _tag(spec_file: Path) -> str:
    return yaml.safe_load(spec_file.read_text())["tags"][-1]


def test_submit_prints_the_id_and_status_shows_the_job(runner: CliRunner, spec_file: Path) -> None:
    result = runner.invoke(app, ["submit", str(spec_file)])
    assert result.exit_code == 0, result.output
    job_id = result.stdout.strip().splitlines()[-1]
    assert len(job_id) >= 8
    status = runner.invoke(app, ["status", job_id, "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["id"] == job_id
    human = runner.invoke(app, ["status", job_id])
    assert job_id in human.stdout and "tiny-sim" in human.stdout


def test_submit_watch_runs_to_the_end(runner: CliRunner, spec_file: Path) -> None:
    result = runner.invoke(
        app, ["submit", str(spec_file), "--watch", "--set", "training.steps=8", "--json"]
    )
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert job["status"] == "SUCCEEDED"
    assert job["spec"]["training"]["steps"] == 8
    assert job["latest_metrics"]["train/loss"]["step"] == 8
    assert "8/8" in result.stderr  # the progress bar reached the end


def test_submit_switches_optimizers_like_the_engine(runner: CliRunner, spec_file: Path) -> None:
    """`--set optimizer.name=adamw` on an ALTO spec used to fail with "optimizer.alpha:
    Extra inputs are not permitted" here while the engine accepted it."""
    result = runner.invoke(
        app,
        [
            "submit",
            str(spec_file),
            "--set",
            "optimizer.name=adamw",
            "--set",
            "optimizer.beta2=0.95",
        ],
    )
    assert result.exit_code == 0, result.output
    job = json.loads(runner.invoke(app, ["status", result.stdout.split()[-1], "--json"]).stdout)
    assert job["spec"]["optimizer"]["name"] == "adamw"
    assert job["spec"]["optimizer"]["beta2"] == 0.95


def test_jobs_lists_with_filters_and_json(runner: CliRunner, spec_file: Path) -> None:
    ids = [runner.invoke(app, ["submit", str(spec_file)]).stdout.split()[-1] for _ in range(3)]
    result = runner.invoke(app, ["jobs", "--tag", _tag(spec_file), "--json"])
    assert result.exit_code == 0, result.output
    assert [j["id"] for j in json.loads(result.stdout)] == list(reversed(ids))
    limited = runner.invoke(app, ["jobs", "--tag", _tag(spec_file), "--limit", "2", "--json"])
    assert len(json.loads(limited.stdout)) == 2
    table = runner.invoke(app, ["jobs", "--tag", _tag(spec_file)])
    assert all(i in table.stdout for i in ids)
    empty = runner.invoke(app, ["jobs", "--tag", "no-such-tag-xyz"])
    assert empty.exit_code == 0 and "no jobs" in empty.stderr


def test_watch_logs_and_cancel(runner: CliRunner, svc: LiveService, spec_file: Path) -> None:
    job_id = runner.invoke(app, ["submit", str(spec_file)]).stdout.split()[-1]
    watched = runner.invoke(app, ["watch", job_id, "--interval", "0.2", "--json"])
    assert watched.exit_code == 0, watched.output
    assert json.loads(watched.stdout)[0]["status"] == "SUCCEEDED"
    logs = runner.invoke(app, ["logs", job_id])
    assert logs.exit_code == 0 and "step 12 loss" in logs.stdout
    tail = runner.invoke(app, ["logs", job_id, "--tail-bytes", "20"])
    assert tail.exit_code == 0 and len(tail.stdout) <= 21 and "step 12 loss" in logs.stdout
    long_id = runner.invoke(
        app, ["submit", str(spec_file), "--set", "training.steps=5000"]
    ).stdout.split()[-1]
    cancelled = runner.invoke(app, ["cancel", long_id, "--json"])
    assert cancelled.exit_code == 0, cancelled.output
    with Client(svc.url, svc.admin_token) as client:
        assert client.wait(long_id, timeout=60, poll_interval=0.1).status.value == "CANCELLED"
    again = runner.invoke(app, ["cancel", long_id])
    assert again.exit_code == 1
    assert "already ended" in again.stderr
    watch_cancelled = runner.invoke(app, ["watch", long_id])
    assert watch_cancelled.exit_code == 1 and "CANCELLED" in watch_cancelled.stderr


def test_compare_watch_and_report(runner: CliRunner, spec_file: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "compare",
            str(spec_file),
            "--arm",
            "alto",
            "--arm",
            "adamw:weight_decay=0.1",
            "--seeds",
            "2",
            "--watch",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    comp = json.loads(result.stdout)
    assert comp["status"] == "SUCCEEDED" and comp["baseline"] == "adamw"
    assert [a["name"] for a in comp["arms"]] == ["alto", "adamw"]
    report = runner.invoke(app, ["report", comp["id"], "--out", str(tmp_path / "r.html")])
    assert report.exit_code == 0, report.output
    alto = next(a for a in comp["arms"] if a["name"] == "alto")
    assert f"{alto['final_val_loss_mean']:.4g}" in report.stdout
    page = (tmp_path / "r.html").read_text()
    assert "data:image/png;base64," in page and f"{alto['final_val_loss_mean']:.4g}" in page
    png = runner.invoke(app, ["report", comp["id"], "--out", str(tmp_path / "r.png"), "--json"])
    assert png.exit_code == 0 and (tmp_path / "r.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads(png.stdout)["id"] == comp["id"]
    bad = runner.invoke(app, ["report", comp["id"], "--out", str(tmp_path / "r.pdf")])
    assert bad.exit_code == 1 and "--out must end in .html or .png" in bad.stderr
    listed = runner.invoke(app, ["comparisons", "--limit", "1", "--json"])
    assert listed.exit_code == 0, listed.output
    (info,) = json.loads(listed.stdout)
    assert info["id"] == comp["id"] and info["status"] == "SUCCEEDED" and info["jobs"] == 4
    table = runner.invoke(app, ["comparisons", "--limit", "1"])
    assert table.exit_code == 0 and comp["id"] in table.stdout
    assert "adamw, alto" in table.stdout  # baseline first
    none = runner.invoke(app, ["comparisons", "--owner", "nobody-at-all"])
    assert none.exit_code == 0 and "no comparisons" in none.stderr
    job_id = comp["arms"][0]["job_ids"][0]
    refused = runner.invoke(app, ["delete", job_id])
    assert refused.exit_code == 1 and "delete the comparison instead" in refused.stderr
    gone = runner.invoke(app, ["delete", "--comparison", comp["id"]])
    assert gone.exit_code == 0 and f"deleted comparison {comp['id']}" in gone.stdout
    assert runner.invoke(app, ["status", job_id]).exit_code == 1
    again = runner.invoke(app, ["delete", "--comparison", comp["id"]])
    assert again.exit_code == 1 and "no comparison" in again.stderr


def test_bad_arguments_give_one_clear_line(
    runner: CliRunner, spec_file: Path, tmp_path: Path
) -> None:
    missing = runner.invoke(app, ["submit", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 1 and "no such file" in missing.stderr
    assert "Traceback" not in missing.output
    bad_spec = tmp_path / "bad.yaml"
    bad_spec.write_text("model: {num_layers: 0}\ntraining: {steps: 0}\n")
    invalid = runner.invoke(app, ["submit", str(bad_spec)])
    assert invalid.exit_code == 1
    assert "model.num_layers" in invalid.stderr and "training.steps" in invalid.stderr
    unknown = runner.invoke(app, ["status", "0123456789abcdef"])
    assert unknown.exit_code == 1 and "404" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1
    bad_set = runner.invoke(app, ["submit", str(spec_file), "--set", "training.stepz=3"])
    assert bad_set.exit_code == 1 and "training.stepz" in bad_set.stderr
    bad_arm = runner.invoke(app, ["compare", str(spec_file), "--arm", "alto", "--arm", "sgd"])
    assert bad_arm.exit_code == 1 and "sgd" in bad_arm.stderr
    usage = runner.invoke(app, ["jobs", "--limit", "0"])
    assert usage.exit_code == 2
    bad_status = runner.invoke(app, ["jobs", "--status", "DONE"])
    assert bad_status.exit_code == 2


def test_wrong_token_and_unreachable_server(svc: LiveService, spec_file: Path) -> None:
    stranger = CliRunner(env={"ALTO_URL": svc.url, "ALTO_TOKEN": "alto_wrong"})
    denied = stranger.invoke(app, ["jobs"])
    assert denied.exit_code == 1 and "401" in denied.stderr
    dead_url = f"http://127.0.0.1:{free_port()}"
    dead = CliRunner(env={"ALTO_TOKEN": "t"}).invoke(
        app, ["--url", dead_url, "--timeout", "2", "status", "abc"]
    )
    assert dead.exit_code == EXIT_UNREACHABLE
    assert dead_url in dead.stderr and "alto serve" in dead.stderr
    assert "Traceback" not in dead.output


def test_token_create_makes_a_working_token(svc: LiveService) -> None:
    result = CliRunner().invoke(
        app, ["token", "create", "--owner", "carol", "--data-dir", str(svc.data_dir), "--json"]
    )
    assert result.exit_code == 0, result.output
    token = json.loads(result.stdout)["token"]
    carol = CliRunner(env={"ALTO_URL": svc.url, "ALTO_TOKEN": token})
    listed = carol.invoke(app, ["jobs", "--json"])
    assert listed.exit_code == 0 and json.loads(listed.stdout) == []  # sees only her own jobs
    bad = CliRunner().invoke(
        app, ["token", "create", "--owner", " x ", "--data-dir", str(svc.data_dir)]
    )
    assert bad.exit_code == 1 and "owner" in bad.stderr


def test_a_failed_job_makes_watch_exit_non_zero(
    runner: CliRunner, svc: LiveService, tmp_path: Path
) -> None:
    svc.cluster.fail_names = ("doomed",)
    path = tmp_path / "doomed.yaml"
    path.write_text(yaml.safe_dump({**TINY_SPEC, "name": "doomed"}))
    result = runner.invoke(app, ["submit", str(path), "--watch"])
    assert result.exit_code == 1
    assert "FAILED" in result.stderr and "simulated crash at step 7" in result.stderr
