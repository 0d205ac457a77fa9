"""`alto study` through typer's runner against the live service (its simulated cluster
runs every job like the engine), and `load_study` reading study files."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import yaml
from alto_client.cli import app
from alto_client.client import Client
from alto_client.spec import SpecError
from alto_client.study import load_study
from livesvc import TINY_SPEC, LiveService
from typer.testing import CliRunner

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def runner(svc: LiveService) -> CliRunner:
    return CliRunner(env={"ALTO_URL": svc.url, "ALTO_TOKEN": svc.admin_token, "COLUMNS": "200"})


@pytest.fixture
def client(svc: LiveService):
    with Client(svc.url, svc.admin_token) as c:
        yield c


def study_data(**changes: object) -> dict:
    """Two arms at batch sizes 8 and 16 (micro batch 4, one worker), 2 trials and 2
    seeds: 8 tuning jobs and 8 final runs of 12 steps on the spec file next to it."""
    data = {
        "name": f"cli-study-{uuid.uuid4().hex[:8]}",
        "spec": "tiny.yaml",
        "spec_overrides": {"training.seed": 5, "tags": ["sim", "study-cli"]},
        "arms": [
            {
                "name": "alto",
                "optimizer": {"name": "alto"},
                "search": {"lr": {"low": 1e-3, "high": 1e-1}},
            },
            {
                "name": "adamw",
                "optimizer": {"name": "adamw"},
                "search": {"lr": {"low": 1e-4, "high": 1e-2}},
            },
        ],
        "batch_sizes": [8, 16],
        "budget": {"steps": 12},
        "tuning": {"trials": 2},
        "seeds": [1, 2],
        "baseline": "adamw",
    }
    data.update(changes)
    return data


@pytest.fixture
def study_dir(tmp_path: Path) -> Path:
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY_SPEC))
    return tmp_path


def write_study(study_dir: Path, name: str = "study.yaml", **changes: object) -> Path:
    path = study_dir / name
    path.write_text(yaml.safe_dump(study_data(**changes)))
    return path


def _ids(client: Client) -> set[str]:
    return {s.id for s in client.studies()}


def _cleanup(client: Client, study_id: str) -> None:
    """Cancel (if running) and delete a study once its jobs have stopped."""
    if client.study(study_id).phase in ("tuning", "final"):
        client.cancel_study(study_id)
    deadline = time.monotonic() + 60
    while True:
        study = client.study(study_id)
        if not any(k in study.jobs for k in ("PENDING", "QUEUED", "RUNNING")):
            break
        assert time.monotonic() < deadline, study.jobs
        time.sleep(0.2)
    client.delete_study(study_id)


# ------------------------------------------------------------------- load_study


def test_load_study_resolves_the_spec_next_to_the_file_and_applies_overrides(
    study_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_study(study_dir)
    monkeypatch.chdir(ROOT)  # not the study's folder: the spec is found next to the file
    req = load_study(path)
    assert req.spec.name == TINY_SPEC["name"]
    assert req.spec.training.seed == 5 and req.spec.tags == ["sim", "study-cli"]
    assert req.spec.training.lr == TINY_SPEC["training"]["lr"]  # the rest from the file
    assert req.batch_sizes == [8, 16] and [a.name for a in req.arms] == ["alto", "adamw"]
    # the same from a mapping, from a string path, and the shipped study file
    assert load_study(str(path)) == req
    inline = study_data(spec=TINY_SPEC)
    assert load_study(inline).spec == req.spec
    shipped = load_study(ROOT / "configs" / "study-tiny-cpu.yaml")
    assert shipped.spec.name == "tiny-moe-cpu" and shipped.batch_sizes == [16, 64, 256]
    assert shipped.spec.model.num_experts == 4  # the MoE spec file it names
    # a spec in a sub-folder, named relative to the study file
    (study_dir / "specs").mkdir()
    (study_dir / "specs" / "t.yaml").write_text(yaml.safe_dump(TINY_SPEC))
    sub = write_study(study_dir, "sub.yaml", spec="specs/t.yaml", spec_overrides=None)
    assert load_study(sub).spec.training.seed == TINY_SPEC["training"]["seed"]


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"spec": "nope.yaml"}, "spec", "cannot read spec file"),
        ({"spec_overrides": {"training.stepz": 3}}, "spec_overrides.training.stepz", "no such"),
        ({"spec_overrides": {"training.steps": 0}}, "spec_overrides.training.steps", "(got 0)"),
        ({"spec_overrides": [1]}, "spec_overrides", "must be a mapping"),
        ({"baseline": "sgd"}, "baseline", "'sgd' is not one of the arms"),
        ({"batch_sizes": [8, 6]}, "batch_sizes.1", "batch size 6 is not a multiple"),
        ({"tuning": {"trials": 65}}, "tuning.trials", "(got 65)"),
    ],
    ids=[
        "spec-file",
        "override-field",
        "override-value",
        "overrides",
        "baseline",
        "batch",
        "trials",
    ],
)
def test_load_study_names_the_bad_field(
    study_dir: Path, changes: dict, field: str, words: str
) -> None:
    path = write_study(study_dir, **changes)
    with pytest.raises(SpecError) as info:
        load_study(path)
    assert info.value.source == str(path)
    assert [p.field for p in info.value.problems] == [field]
    assert words in info.value.problems[0].message


# ------------------------------------------------------------------- the commands


def test_study_plan_prints_the_plan_and_starts_nothing(
    runner: CliRunner, client: Client, study_dir: Path
) -> None:
    path = write_study(study_dir)
    before = _ids(client)
    human = runner.invoke(app, ["study", "plan", str(path)])
    assert human.exit_code == 0, human.output
    assert "16 jobs (8 tuning, 8 final)" in human.stdout
    assert "alto" in human.stdout and "adamw" in human.stdout
    as_json = runner.invoke(app, ["study", "plan", str(path), "--json"])
    assert as_json.exit_code == 0, as_json.output
    plan = json.loads(as_json.stdout)
    assert (plan["jobs"], plan["tuning_jobs"], plan["final_jobs"]) == (16, 8, 8)
    assert [b["batch_size"] for b in plan["batches"]] == [8, 16]
    dry = runner.invoke(app, ["study", "submit", str(path), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "16 jobs (8 tuning, 8 final)" in dry.stdout
    dry_json = runner.invoke(app, ["study", "submit", str(path), "--dry-run", "--json"])
    assert json.loads(dry_json.stdout) == plan
    assert _ids(client) == before  # nothing was stored
    # the shipped study file: its spec is found next to it, wherever the command runs
    shipped_path = ROOT / "configs" / "study-tiny-cpu.yaml"
    req = load_study(shipped_path)
    cells = len(req.batch_sizes) * len(req.arms)
    tuning, final = cells * req.tuning.trials, cells * len(req.seeds)
    shipped = runner.invoke(app, ["study", "plan", str(shipped_path)])
    assert shipped.exit_code == 0, shipped.output
    assert f"{tuning + final} jobs ({tuning} tuning, {final} final)" in shipped.stdout


def test_study_submit_show_list_cancel_delete(
    runner: CliRunner, client: Client, study_dir: Path
) -> None:
    path = write_study(study_dir)
    submitted = runner.invoke(app, ["study", "submit", str(path), "--json"])
    assert submitted.exit_code == 0, submitted.output
    study = json.loads(submitted.stdout)
    sid = study["id"]
    try:
        assert study["phase"] == "tuning" and study["plan"]["jobs"] == 16
        assert study["name"].startswith("cli-study-")
        trial = study["batches"][0]["arms"][0]["trials"][0]
        job = client.job(trial["job_id"])
        assert job.spec["training"]["seed"] == 5
        assert job.spec["training"]["global_batch_size"] == 8
        shown = runner.invoke(app, ["study", "show", sid, "--json"])
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.stdout)["id"] == sid
        listed = runner.invoke(app, ["study", "list"])
        assert listed.exit_code == 0, listed.output
        assert sid in listed.stdout and "8,16" in listed.stdout
        listed_json = json.loads(runner.invoke(app, ["study", "list", "--json"]).stdout)
        assert sid in [s["id"] for s in listed_json]
        # a running study cannot be deleted; cancelled, it can
        busy = runner.invoke(app, ["study", "delete", sid])
        assert busy.exit_code == 1 and "409" in busy.stderr and "cancel it first" in busy.stderr
        cancelled = runner.invoke(app, ["study", "cancel", sid])
        assert cancelled.exit_code == 0, cancelled.output
        assert f"study {sid}: cancelled" in cancelled.stderr
        again = runner.invoke(app, ["study", "cancel", sid])
        assert again.exit_code == 1 and "409" in again.stderr
        assert len(again.stderr.strip().splitlines()) == 1
    finally:
        _cleanup(client, sid)
    gone = runner.invoke(app, ["study", "show", sid])
    assert gone.exit_code == 1 and "404" in gone.stderr


def test_study_submit_watch_runs_to_the_end(
    runner: CliRunner, client: Client, study_dir: Path, tmp_path: Path
) -> None:
    path = write_study(study_dir)
    out = tmp_path / "study.png"
    result = runner.invoke(
        app,
        ["study", "submit", str(path), "--watch", "--interval", "0.5", "--json", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    study = json.loads(result.stdout)
    try:
        assert study["phase"] == "done" and study["status"] == "SUCCEEDED"
        assert study["jobs"] == {"SUCCEEDED": 16}
        assert "tuning:" in result.stderr and "done:" in result.stderr  # the watch lines
        assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        for batch in study["batches"]:
            assert batch["target"] is not None
            for arm in batch["arms"]:
                assert arm["chosen_trial"] is not None and len(arm["final_job_ids"]) == 2
                assert arm["final_val_loss_ci"] is not None
        assert study["findings"]
        human = runner.invoke(app, ["study", "show", study["id"]])
        assert human.exit_code == 0, human.output
        assert "alto" in human.stdout and "adamw" in human.stdout
        assert "numbers are partial" not in human.stderr
    finally:
        _cleanup(client, study["id"])


def test_study_submit_prints_the_id_last(
    runner: CliRunner, client: Client, study_dir: Path
) -> None:
    path = write_study(study_dir, batch_sizes=[8], seeds=[1])
    result = runner.invoke(app, ["study", "submit", str(path)])
    assert result.exit_code == 0, result.output
    sid = result.stdout.strip().splitlines()[-1]
    try:
        assert "6 jobs (4 tuning, 2 final)" in result.stdout
        assert f"study {sid}: 6 jobs planned" in result.stderr
        assert client.study(sid).plan.jobs == 6
    finally:
        _cleanup(client, sid)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"baseline": "sgd"}, ["baseline:", "'sgd'"]),
        ({"batch_sizes": [8, 6]}, ["batch_sizes.1:", "batch size 6", "4 * 1 = 4"]),
        (
            {
                "arms": [
                    study_data()["arms"][0],
                    {
                        **study_data()["arms"][1],
                        "search": {
                            "lr": {"low": 1e-4, "high": 1e-2},
                            "beta3": {"low": 0.1, "high": 0.2},
                        },
                    },
                ]
            },
            ["arms.1.search.beta3:", "no numeric field 'beta3'"],
        ),
        ({"tuning": {"trials": 65}}, ["tuning.trials:", "64", "(got 65)"]),
        ({"spec_overrides": {"training.stepz": 3}}, ["spec_overrides.training.stepz:"]),
        ({"spec": "nope.yaml"}, ["spec:", "nope.yaml"]),
    ],
    ids=["baseline", "batch-size", "beta3", "trials", "override", "spec-file"],
)
def test_a_bad_study_file_gives_one_line_naming_the_field(
    runner: CliRunner, client: Client, study_dir: Path, changes: dict, words: list[str]
) -> None:
    path = write_study(study_dir, **changes)
    before = _ids(client)
    for command in (["study", "plan"], ["study", "submit"]):
        result = runner.invoke(app, [*command, str(path)])
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert str(path) in result.stderr
        for word in words:
            assert word in result.stderr, (word, result.stderr)
    assert _ids(client) == before


def test_study_files_that_cannot_be_read(runner: CliRunner, tmp_path: Path) -> None:
    missing = runner.invoke(app, ["study", "plan", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 1 and "cannot read study file" in missing.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("arms: [\n")
    bad = runner.invoke(app, ["study", "plan", str(broken)])
    assert bad.exit_code == 1 and "not valid YAML" in bad.stderr
    assert "Traceback" not in bad.output
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    not_map = runner.invoke(app, ["study", "submit", str(listing)])
    assert not_map.exit_code == 1 and "a study must be a mapping" in not_map.stderr
