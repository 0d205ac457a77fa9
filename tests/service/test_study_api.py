"""Studies through the API: plan, tuning trials on the simulated cluster, selection of the
best trial per (batch size, arm), final runs with every seed, the summary and the plot;
restarts, cancellation, deletion, visibility, idempotency and caps (SQLite and
PostgreSQL)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.app import create_app
from service.db.tables import JobRow, JobTag, MetricRow, StudyRow
from service.study_driver import advance_study

ROOT = Path(__file__).resolve().parents[2]
BASE_SPEC = yaml.safe_load((ROOT / "configs" / "tiny-moe-cpu.yaml").read_text())
STEPS = 8
PNG = b"\x89PNG\r\n\x1a\n"


def study_body(**changes: object) -> dict:
    """Two arms tuned on their lr at batch sizes 16 and 32 (micro batch 8 * dp 2 = 16):
    3 trials each, then 2 seeds: 12 tuning jobs and 8 final runs."""
    body = {
        "spec": copy.deepcopy(BASE_SPEC),
        "arms": [
            {
                "name": "alto",
                "optimizer": {"name": "alto"},
                "search": {"lr": {"low": 2e-3, "high": 2e-1, "scale": "log"}},
            },
            {
                "name": "adamw",
                "optimizer": {"name": "adamw"},
                "search": {"lr": {"low": 2e-4, "high": 2e-2, "scale": "log"}},
            },
        ],
        "batch_sizes": [16, 32],
        "budget": {"steps": STEPS},
        "tuning": {"trials": 3},
        "seeds": [1, 2],
        "baseline": "adamw",
    }
    body.update(changes)
    return body


@pytest.fixture(autouse=True)
def _room(svc):
    svc.cluster.nodes = [{"CPU": 64.0}]  # every job of a study at once (2 CPUs each)


def create(svc, body=None, headers=None) -> dict:
    r = svc.client.post("/v1/studies", json=body or study_body(), headers=headers or svc.alice)
    assert r.status_code == 202, r.text
    assert r.headers["location"].endswith(f"/v1/studies/{r.json()['id']}")
    return r.json()


def get(svc, study_id: str, headers=None) -> dict:
    r = svc.client.get(f"/v1/studies/{study_id}", headers=headers or svc.alice)
    assert r.status_code == 200, r.text
    return r.json()


def db_jobs(svc, study_id: str) -> list[JobRow]:
    with svc.app.state.svc.factory() as s:
        seq = s.scalar(select(StudyRow.seq).where(StudyRow.id == study_id))
        rows = list(s.scalars(select(JobRow).where(JobRow.study_seq == seq).order_by(JobRow.seq)))
        s.expunge_all()
        return rows


def count(svc, table, *where) -> int:
    with svc.app.state.svc.factory() as s:
        return s.scalar(select(func.count()).select_from(table).where(*where))


def curve(final: float) -> list[float]:
    """A validation curve from 5.0 down to `final` over the run's evaluations."""
    return [5.0 + (final - 5.0) * (i + 1) / STEPS for i in range(STEPS)]


def report(svc, job_id: str, val: list[float], sem: float | None = None) -> None:
    """Post what the engine would: train/loss every step, val/loss at every evaluation
    (eval_interval is 1 here), with the job's own ingest token. NaN goes as raw JSON."""
    points = []
    for i, v in enumerate(val):
        step = i + 1
        points.append({"step": step, "name": "val/loss", "value": v, "time": 1000.0 + step})
        points.append({"step": step, "name": "train/loss", "value": v + 0.1, "time": 1000.0 + step})
        points.append(
            {"step": step, "name": "train/tokens_per_s", "value": 500.0, "time": 1000.0 + step}
        )
    if sem is not None:
        points.append({"step": len(val), "name": "val/loss_sem", "value": sem, "time": 1009.0})
    body = json.dumps({"points": points})  # allow_nan: NaN and Infinity as the engine sends
    r = svc.client.post(
        f"/v1/jobs/{job_id}/metrics",
        content=body.encode(),
        headers={
            "Authorization": f"Bearer {svc.ingest_token(job_id)}",
            "Content-Type": "application/json",
        },
    )
    assert r.status_code == 200, r.text


def end(svc, job_id: str, status: str = "SUCCEEDED") -> None:
    svc.cluster.set(f"alto-{job_id}", status, None if status == "SUCCEEDED" else "exit code 1")


def trial_ids(study: dict) -> dict[tuple[int, str, int], str]:
    return {
        (b["batch_size"], a["name"], t["trial"]): t["job_id"]
        for b in study["batches"]
        for a in b["arms"]
        for t in a["trials"]
    }


# the outcome of every trial: a final validation loss, "nan" (diverged, though the job
# exits 0) or "fail" (FAILED, after reporting the lowest loss of all)
TRIALS: dict[tuple[int, str, int], float | str] = {
    (16, "alto", 0): 3.0,
    (16, "alto", 1): "nan",
    (16, "alto", 2): 2.5,
    (16, "adamw", 0): "fail",
    (16, "adamw", 1): 3.2,
    (16, "adamw", 2): 3.4,
    (32, "alto", 0): 2.8,
    (32, "alto", 1): 2.9,
    (32, "alto", 2): "fail",
    (32, "adamw", 0): 3.5,
    (32, "adamw", 1): "nan",
    (32, "adamw", 2): 3.1,
}
CHOSEN = {(16, "alto"): 2, (16, "adamw"): 1, (32, "alto"): 0, (32, "adamw"): 2}


def run_trial(svc, job_id: str, outcome: float | str) -> None:
    if outcome == "nan":
        report(svc, job_id, [*curve(1.0)[:4], math.nan, math.nan, math.nan, math.nan])
        end(svc, job_id)
    elif outcome == "fail":
        report(svc, job_id, curve(1.0)[:5])
        end(svc, job_id, "FAILED")
    else:
        assert isinstance(outcome, float)
        report(svc, job_id, curve(outcome))
        end(svc, job_id)


# final runs: (batch, arm) -> final validation loss per seed 1, 2
FINALS = {
    (16, "alto"): [2.0, 2.1],
    (16, "adamw"): [3.0, 3.1],
    (32, "alto"): [3.0, 3.2],
    (32, "adamw"): [3.1, 3.05],
}


# ------------------------------------------------------------------- the whole study


def test_dry_run_plan_stores_nothing(svc):
    r = svc.client.post("/v1/studies/plan", json=study_body(), headers=svc.alice)
    assert r.status_code == 200, r.text
    plan = r.json()
    assert (plan["jobs"], plan["tuning_jobs"], plan["final_jobs"]) == (20, 12, 8)
    assert [b["batch_size"] for b in plan["batches"]] == [16, 32]
    assert all(b["steps"] == STEPS for b in plan["batches"])
    assert [b["tokens_per_job"] for b in plan["batches"]] == [16 * 128 * 8, 32 * 128 * 8]
    assert plan["tokens"] == 10 * (16 + 32) * 128 * 8
    assert {arm: len(points) for arm, points in plan["trials"].items()} == {"alto": 3, "adamw": 3}
    for point in plan["trials"]["adamw"]:
        assert 2e-4 <= point["lr"] <= 2e-2
    assert plan["resource"] == "cpu" and plan["resource_hours"] > 0
    assert "MFLOP per training token" in plan["estimate_basis"]
    assert count(svc, StudyRow) == 0 and count(svc, JobRow) == 0
    assert svc.client.get("/v1/studies", headers=svc.alice).json()["items"] == []
    # the same request twice: the same points (the plan is reproducible)
    again = svc.client.post("/v1/studies/plan", json=study_body(), headers=svc.alice).json()
    assert again["trials"] == plan["trials"]
    other = study_body(tuning={"trials": 3, "seed": 7})
    moved = svc.client.post("/v1/studies/plan", json=other, headers=svc.alice).json()
    assert moved["trials"] != plan["trials"]
    # a token budget: larger batches take fewer steps
    tokens = svc.client.post(
        "/v1/studies/plan", json=study_body(budget={"tokens": 32 * 128 * 8}), headers=svc.alice
    ).json()
    assert [b["steps"] for b in tokens["batches"]] == [16, 8]
    # a grid: the product of every field's values; halton: its own points in the ranges
    grid = study_body(tuning={"method": "grid"})
    grid["arms"][0]["search"] = {"lr": {"values": [1e-2, 3e-2]}}
    grid["arms"][1]["search"] = {
        "lr": {"values": [1e-3, 3e-3, 1e-2]},
        "weight_decay": {"values": [0.0, 0.1], "scale": "linear"},
    }
    r = svc.client.post("/v1/studies/plan", json=grid, headers=svc.alice)
    assert r.status_code == 200, r.text
    points = r.json()["trials"]
    assert points["alto"] == [{"lr": 1e-2}, {"lr": 3e-2}]
    assert len(points["adamw"]) == 6 and {"lr": 3e-3, "weight_decay": 0.1} in points["adamw"]
    assert r.json()["tuning_jobs"] == 2 * (2 + 6)
    halton = study_body(tuning={"trials": 5, "method": "halton"})
    r = svc.client.post("/v1/studies/plan", json=halton, headers=svc.alice)
    assert r.status_code == 200, r.text
    lrs = [p["lr"] for p in r.json()["trials"]["alto"]]
    assert len(set(lrs)) == 5 and all(2e-3 <= v <= 2e-1 for v in lrs)
    assert count(svc, StudyRow) == 0 and count(svc, JobRow) == 0


def test_study_tunes_selects_the_best_trial_and_runs_the_finals(svc):
    planned = svc.client.post("/v1/studies/plan", json=study_body(), headers=svc.alice).json()
    study = create(svc)
    assert study["phase"] == "tuning" and study["status"] == "PENDING"
    assert study["plan"] == planned
    assert study["jobs"] == {"PENDING": 12}
    assert study["arms"] == ["alto", "adamw"] and study["baseline"] == "adamw"
    assert study["batch_sizes"] == [16, 32] and study["seeds"] == [1, 2]

    # the trials are ordinary jobs with their study role, batch size, trial and point
    rows = db_jobs(svc, study["id"])
    assert len(rows) == planned["tuning_jobs"] == 12
    assert {r.study_role for r in rows} == {"trial"}
    assert {(r.batch_size, r.arm, r.trial) for r in rows} == set(TRIALS)
    for r in rows:
        assert r.params == planned["trials"][r.arm][r.trial]
        assert r.spec["training"]["global_batch_size"] == r.batch_size
        assert r.spec["training"]["steps"] == STEPS
        assert r.spec["optimizer"]["name"] == r.arm
        assert r.spec["optimizer"]["lr"] == r.params["lr"]
        assert r.spec["training"]["seed"] == BASE_SPEC["training"]["seed"]
        assert r.name == f"tiny-moe-cpu/b{r.batch_size}/{r.arm}/trial{r.trial}"
    ids = trial_ids(study)
    assert set(ids) == set(TRIALS)

    svc.tick()  # every trial goes to the cluster
    assert all(f"alto-{jid}" in svc.cluster.jobs for jid in ids.values())
    for key, outcome in TRIALS.items():
        if key[:2] == (32, "adamw"):
            continue  # one (batch, arm) still running: no selection yet
        run_trial(svc, ids[key], outcome)
    svc.tick()
    mid = get(svc, study["id"])
    assert mid["phase"] == "tuning" and mid["status"] == "RUNNING"
    assert len(db_jobs(svc, study["id"])) == 12  # no final run before every trial ended
    for key, outcome in TRIALS.items():
        if key[:2] == (32, "adamw"):
            run_trial(svc, ids[key], outcome)
    svc.tick()  # the trials end, the study moves on, and its final runs are launched

    study = get(svc, study["id"])
    assert study["phase"] == "final", study["phase_reason"]
    assert "8 final runs" in study["phase_reason"]
    finals = [r for r in db_jobs(svc, study["id"]) if r.study_role == "final"]
    assert sorted((r.batch_size, r.arm, r.seed) for r in finals) == sorted(
        (b, a, s) for (b, a) in CHOSEN for s in (1, 2)
    )
    for r in finals:
        chosen_trial = CHOSEN[(r.batch_size, r.arm)]
        lr = planned["trials"][r.arm][chosen_trial]["lr"]
        assert r.trial == chosen_trial and r.params == {"lr": lr}
        assert r.spec["optimizer"]["lr"] == lr
        assert r.spec["training"]["seed"] == r.seed
        assert r.spec["training"]["global_batch_size"] == r.batch_size
        assert r.name == f"tiny-moe-cpu/b{r.batch_size}/{r.arm}/seed{r.seed}"
        assert f"alto-{r.id}" in svc.cluster.jobs  # launched in the same pass
    with svc.app.state.svc.factory() as s:
        stored = s.scalar(select(StudyRow.chosen).where(StudyRow.id == study["id"]))
    assert stored == {
        f"{b}/{a}": {"trial": t, "params": planned["trials"][a][t]} for (b, a), t in CHOSEN.items()
    }

    # the summary: the chosen point is the lowest final val loss among usable trials
    for batch in study["batches"]:
        for arm in batch["arms"]:
            key = (batch["batch_size"], arm["name"])
            assert arm["chosen_trial"] == CHOSEN[key]
            assert arm["chosen"] == planned["trials"][arm["name"]][CHOSEN[key]]
            usable = {
                t: v for (b, a, t), v in TRIALS.items() if (b, a) == key and isinstance(v, float)
            }
            assert min(usable, key=usable.__getitem__) == CHOSEN[key]
            for t in arm["trials"]:
                outcome = TRIALS[(*key, t["trial"])]
                assert t["diverged"] is (outcome == "nan")
                assert t["status"] == ("FAILED" if outcome == "fail" else "SUCCEEDED")
                if isinstance(outcome, float):
                    assert t["final_val_loss"] == pytest.approx(outcome)
                else:  # a diverged or failed trial has no loss to compare (and is skipped)
                    assert t["final_val_loss"] is None
            assert len(arm["final_job_ids"]) == 2 and arm["final_status"] == "QUEUED"
    b16_alto = study["batches"][0]["arms"][0]
    assert b16_alto["tuning_curve"] == pytest.approx([3.0, 3.0, 2.5])

    # the final runs end: the study is done
    svc.tick()
    by_key = {(r.batch_size, r.arm, r.seed): r.id for r in finals}
    for (b, a), losses in FINALS.items():
        for seed, loss in zip((1, 2), losses):
            report(svc, by_key[(b, a, seed)], curve(loss), sem=0.01)
    for job_id in by_key.values():
        end(svc, job_id)
    svc.tick()
    done = get(svc, study["id"])
    assert done["phase"] == "done" and done["status"] == "SUCCEEDED", done["phase_reason"]
    assert done["jobs"] == {"SUCCEEDED": 18, "FAILED": 2}
    b16, b32 = done["batches"]
    assert b16["target"] == pytest.approx(3.05) and b32["target"] == pytest.approx(3.075)
    assert b16["eval_noise"] == pytest.approx(0.01)
    arms16 = {a["name"]: a for a in b16["arms"]}
    arms32 = {a["name"]: a for a in b32["arms"]}
    assert arms16["alto"]["final_val_loss_mean"] == pytest.approx(2.05)
    lo, hi = arms16["alto"]["final_val_loss_ci"]
    assert 2.0 <= lo <= 2.05 <= hi <= 2.1
    assert arms16["alto"]["delta_vs_baseline"] == pytest.approx(-1.0)
    assert arms16["alto"]["delta_ci"][1] < 0
    assert arms16["alto"]["verdict"] == "better"
    assert arms16["adamw"]["verdict"] is None  # the baseline is not compared with itself
    assert arms32["alto"]["verdict"] == "inside the noise"
    assert arms16["alto"]["final_status"] == "SUCCEEDED" and arms16["alto"]["seeds"] == [1, 2]
    assert arms16["alto"]["reached_target"] == 2 and arms16["alto"]["speedup"] > 1
    # the common target: the tuned baseline's worst final loss, so each of its runs reaches it
    worst = max(FINALS[(16, "adamw")] + FINALS[(32, "adamw")])
    assert done["common_target"] == pytest.approx(worst)
    assert len(done["scaling"]) == 4
    findings = "\n".join(done["findings"])
    assert "batch 16: alto's final validation loss is 1.000 lower than adamw's" in findings
    assert "common target" in findings
    png = svc.client.get(f"/v1/studies/{study['id']}/plot.png", headers=svc.alice)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(PNG) and len(png.content) > 10_000
    listed = svc.client.get("/v1/studies", headers=svc.alice).json()["items"]
    assert [(s["id"], s["phase"], s["status"], s["jobs"]) for s in listed] == [
        (study["id"], "done", "SUCCEEDED", 20)
    ]
    # more passes change nothing
    svc.tick(2)
    assert get(svc, study["id"])["jobs"] == {"SUCCEEDED": 18, "FAILED": 2}


def test_a_study_whose_trials_all_fail_ends_failed_without_final_runs(svc):
    study = create(svc, study_body(batch_sizes=[16], tuning={"trials": 2}))
    svc.tick()
    for job_id in trial_ids(study).values():
        end(svc, job_id, "FAILED")
    svc.tick()
    got = get(svc, study["id"])
    assert got["phase"] == "done" and got["status"] == "FAILED"
    assert "no usable trial for batch 16 alto, batch 16 adamw" in got["phase_reason"]
    assert len(db_jobs(svc, study["id"])) == 4
    assert any("no alto trial finished" in f for f in got["findings"])
    png = svc.client.get(f"/v1/studies/{study['id']}/plot.png", headers=svc.alice)
    assert png.status_code == 200 and png.content.startswith(PNG)


def test_plot_of_a_study_that_has_not_started(svc):
    study = create(svc)
    png = svc.client.get(f"/v1/studies/{study['id']}/plot.png", headers=svc.alice)
    assert png.status_code == 200 and png.content.startswith(PNG)


# ------------------------------------------------------------------- restarts and races


def _finish_all_trials(svc, study: dict, only=None) -> None:
    for key, job_id in trial_ids(study).items():
        if only is None or only(key):
            report(svc, job_id, curve(3.0 - 0.1 * key[2]))
            end(svc, job_id)


def test_a_restarted_service_picks_up_a_study_mid_tuning(svc):
    study = create(svc)
    svc.tick()
    _finish_all_trials(svc, study, only=lambda k: k[0] == 16)
    svc.tick()
    assert get(svc, study["id"])["phase"] == "tuning"
    # a second service on the same database (a restart, or a second replica)
    app2 = create_app(svc.app.state.svc.settings, backend=svc.cluster, start_scheduler=False)
    with TestClient(app2) as c2:
        got = c2.get(f"/v1/studies/{study['id']}", headers=svc.alice)
        assert got.status_code == 200 and got.json()["phase"] == "tuning"
        _finish_all_trials(svc, study, only=lambda k: k[0] == 32)
        app2.state.svc.scheduler.run_once()  # the new service moves it on
        moved = c2.get(f"/v1/studies/{study['id']}", headers=svc.alice).json()
        assert moved["phase"] == "final"
        # both services keep passing: the final runs are created once
        for _ in range(2):
            svc.tick()
            app2.state.svc.scheduler.run_once()
    finals = [r for r in db_jobs(svc, study["id"]) if r.study_role == "final"]
    assert len(finals) == 8
    assert len({(r.batch_size, r.arm, r.seed) for r in finals}) == 8
    # the trial with the lowest loss (3.0 - 0.1 * 2) was chosen everywhere
    assert {r.trial for r in finals} == {2}
    assert get(svc, study["id"])["phase"] == "final"


def test_two_passes_that_both_saw_the_tuning_end_create_the_finals_once(svc, monkeypatch):
    """Two schedulers (two services on one database) both list the study as ready in
    its tuning phase, then advance it one after the other: the second must neither add
    final runs again nor take the fresh final phase for an ended one."""
    study = create(svc)
    svc.tick()
    _finish_all_trials(svc, study)
    # a pass records the trials' end without advancing the study
    with monkeypatch.context() as m:
        m.setattr("service.scheduler.advance_studies", lambda factory: 0)
        svc.tick()
    with svc.app.state.svc.factory() as s:
        seq = s.scalar(select(StudyRow.seq).where(StudyRow.id == study["id"]))
    factory = svc.app.state.svc.factory
    with factory() as first, factory() as second:
        advance_study(first, seq)
        advance_study(second, seq)
    got = get(svc, study["id"])
    assert got["phase"] == "final", got["phase_reason"]
    finals = [r for r in db_jobs(svc, study["id"]) if r.study_role == "final"]
    assert len(finals) == 8
    svc.tick(2)
    assert get(svc, study["id"])["phase"] == "final"
    assert len(db_jobs(svc, study["id"])) == 20


# ------------------------------------------------------------------- cancel and delete


def test_cancel_mid_tuning_then_delete(svc):
    other = create(svc, study_body(batch_sizes=[16], tuning={"trials": 1}))
    study = create(svc)
    svc.tick()
    ids = trial_ids(study)
    running = [ids[(16, "alto", 0)], ids[(32, "adamw", 1)]]
    for job_id in running:
        svc.cluster.set(f"alto-{job_id}", "RUNNING")
        report(svc, job_id, curve(3.0)[:3])
    done_id = ids[(16, "adamw", 2)]
    report(svc, done_id, curve(3.0))
    end(svc, done_id)
    svc.tick()
    assert get(svc, study["id"])["status"] == "RUNNING"
    assert count(svc, MetricRow) == 2 * 3 * 3 + 8 * 3  # (jobs * steps * metrics)

    r = svc.client.delete(f"/v1/studies/{study['id']}", headers=svc.alice)
    assert r.status_code == 409 and "cancel it first" in r.json()["message"]
    assert "tuning phase" in r.json()["message"]

    r = svc.client.post(f"/v1/studies/{study['id']}/cancel", headers=svc.alice)
    assert r.status_code == 202, r.text
    got = r.json()
    assert got["phase"] == "cancelled" and got["status"] == "CANCELLED"
    # every launched job that had not ended is stopped in Ray, running or still queued
    unfinished = {f"alto-{j}" for j in ids.values() if j != done_id}
    assert set(svc.cluster.stops) == unfinished and len(svc.cluster.stops) == 11
    assert all(svc.cluster.jobs[f"alto-{j}"].status == "STOPPED" for j in running)
    # the running ones are still being stopped: deleting must wait for them
    r = svc.client.delete(f"/v1/studies/{study['id']}", headers=svc.alice)
    assert r.status_code == 409 and "unfinished job" in r.json()["message"]
    svc.tick()
    statuses = {
        j: svc.client.get(f"/v1/jobs/{j}", headers=svc.alice).json()["status"] for j in ids.values()
    }
    assert statuses.pop(done_id) == "SUCCEEDED"  # an ended job keeps its status
    assert set(statuses.values()) == {"CANCELLED"}
    got = get(svc, study["id"])
    assert got["phase"] == "cancelled" and got["status"] == "CANCELLED"
    assert got["jobs"] == {"CANCELLED": 11, "SUCCEEDED": 1}
    svc.tick(2)  # a cancelled study never moves on
    assert len(db_jobs(svc, study["id"])) == 12
    assert get(svc, study["id"])["phase"] == "cancelled"

    r = svc.client.post(f"/v1/studies/{study['id']}/cancel", headers=svc.alice)
    assert r.status_code == 409 and "already ended" in r.json()["message"]

    assert svc.client.delete(f"/v1/studies/{study['id']}", headers=svc.bob).status_code == 404
    r = svc.client.delete(f"/v1/studies/{study['id']}", headers=svc.alice)
    assert r.status_code == 204 and r.content == b""
    assert svc.client.get(f"/v1/studies/{study['id']}", headers=svc.alice).status_code == 404
    for job_id in ids.values():
        assert svc.client.get(f"/v1/jobs/{job_id}", headers=svc.alice).status_code == 404
    assert count(svc, StudyRow) == 1  # the other study is untouched
    assert count(svc, JobRow) == 2
    assert count(svc, MetricRow) == 0
    assert count(svc, JobTag) == 2 * len(BASE_SPEC["tags"])
    assert svc.client.delete(f"/v1/studies/{study['id']}", headers=svc.alice).status_code == 404
    assert get(svc, other["id"])["phase"] == "tuning"


def test_cancel_in_the_final_phase_and_delete_a_done_study(svc):
    study = create(svc, study_body(batch_sizes=[16], tuning={"trials": 1}))
    svc.tick()
    _finish_all_trials(svc, study)
    svc.tick()
    assert get(svc, study["id"])["phase"] == "final"
    r = svc.client.post(f"/v1/studies/{study['id']}/cancel", headers=svc.alice)
    assert r.status_code == 202 and r.json()["phase"] == "cancelled"
    svc.tick()
    got = get(svc, study["id"])
    assert got["jobs"] == {"SUCCEEDED": 2, "CANCELLED": 4} and got["status"] == "CANCELLED"

    done = create(svc, study_body(batch_sizes=[16], tuning={"trials": 1}, seeds=[1]))
    svc.tick()
    _finish_all_trials(svc, done)
    svc.tick()
    for r in db_jobs(svc, done["id"]):
        if r.study_role == "final":
            report(svc, r.id, curve(2.0))
            end(svc, r.id)
    svc.tick()
    assert get(svc, done["id"])["phase"] == "done"
    r = svc.client.post(f"/v1/studies/{done['id']}/cancel", headers=svc.alice)
    assert r.status_code == 409
    assert svc.client.delete(f"/v1/studies/{done['id']}", headers=svc.alice).status_code == 204
    assert len(db_jobs(svc, study["id"])) == 6


# ------------------------------------------------------------------- who sees what


def test_listing_pagination_and_ownership(svc):
    ids = [create(svc, study_body(name=f"s{i}"))["id"] for i in range(3)]
    bobs = create(svc, study_body(name="bob's"), svc.bob)["id"]
    page1 = svc.client.get("/v1/studies?limit=2", headers=svc.alice).json()
    page2 = svc.client.get(
        f"/v1/studies?limit=2&cursor={page1['next_cursor']}", headers=svc.alice
    ).json()
    assert [s["id"] for s in page1["items"] + page2["items"]] == ids[::-1]
    assert page2["next_cursor"] is None
    first = page1["items"][0]
    assert first["name"] == "s2" and first["owner"] == "alice"
    assert first["phase"] == "tuning" and first["status"] == "PENDING"
    assert first["arms"] == ["alto", "adamw"] and first["baseline"] == "adamw"
    assert first["batch_sizes"] == [16, 32] and first["jobs"] == 12
    # users see only their own; admins everyone's, or one owner's
    assert [s["id"] for s in svc.client.get("/v1/studies", headers=svc.bob).json()["items"]] == [
        bobs
    ]
    assert svc.client.get("/v1/studies?owner=bob", headers=svc.alice).json()["items"] == []
    everyone = svc.client.get("/v1/studies", headers=svc.admin).json()["items"]
    assert len(everyone) == 4 and {s["owner"] for s in everyone} == {"alice", "bob"}
    only_bob = svc.client.get("/v1/studies?owner=bob", headers=svc.admin).json()["items"]
    assert [s["id"] for s in only_bob] == [bobs]
    # another user's study does not exist for bob, whatever he asks
    sid = ids[0]
    for method, path in [
        ("GET", f"/v1/studies/{sid}"),
        ("GET", f"/v1/studies/{sid}/plot.png"),
        ("POST", f"/v1/studies/{sid}/cancel"),
        ("DELETE", f"/v1/studies/{sid}"),
    ]:
        r = svc.client.request(method, path, headers=svc.bob)
        assert r.status_code == 404 and "no study" in r.json()["message"], (method, path)
    assert get(svc, sid, svc.admin)["owner"] == "alice"
    assert get(svc, sid)["phase"] == "tuning"  # bob's cancel did nothing
    # admins may cancel anyone's
    r = svc.client.post(f"/v1/studies/{bobs}/cancel", headers=svc.admin)
    assert r.status_code == 202 and r.json()["phase"] == "cancelled"
    # no token, no studies
    assert svc.client.get("/v1/studies").status_code == 401
    assert svc.client.post("/v1/studies/plan", json=study_body()).status_code == 401
    # unknown and malformed ids
    assert svc.client.get("/v1/studies/0123456789abcdef", headers=svc.alice).status_code == 404
    for bad in ("x" * 41, "a%00b", "a b"):
        assert svc.client.get(f"/v1/studies/{bad}", headers=svc.alice).status_code == 422


def test_idempotency_key(svc):
    h = {**svc.alice, "Idempotency-Key": "study-1"}
    a = create(svc, study_body(), h)
    b = create(svc, study_body(), h)
    assert a["id"] == b["id"]
    assert count(svc, StudyRow) == 1 and count(svc, JobRow) == 12
    r = svc.client.post("/v1/studies", json=study_body(seeds=[1, 2, 3]), headers=h)
    assert r.status_code == 409 and "Idempotency-Key" in r.json()["message"]
    assert count(svc, StudyRow) == 1
    # the same key of another user is another study
    c = create(svc, study_body(), {**svc.bob, "Idempotency-Key": "study-1"})
    assert c["id"] != a["id"] and count(svc, StudyRow) == 2
    r = svc.client.post(
        "/v1/studies", json=study_body(), headers={**svc.alice, "Idempotency-Key": "k" * 201}
    )
    assert r.status_code == 400 and "Idempotency-Key" in r.json()["message"]


# ------------------------------------------------------------------- caps


def test_max_jobs_and_max_tokens_below_the_plan(svc):
    for path in ("/v1/studies/plan", "/v1/studies"):
        r = svc.client.post(path, json=study_body(max_jobs=19), headers=svc.alice)
        assert r.status_code == 422, r.text
        body = r.json()
        assert (
            "20 jobs (12 tuning, 8 final)" in body["message"]
            and "max_jobs of 19" in (body["message"])
        )
        assert body["errors"] == [{"loc": ["body", "max_jobs"], "msg": "20 > 19", "type": "cap"}]
        tokens = 10 * (16 + 32) * 128 * 8
        r = svc.client.post(path, json=study_body(max_tokens=tokens - 1), headers=svc.alice)
        assert r.status_code == 422, r.text
        body = r.json()
        assert f"{tokens:,} training tokens" in body["message"]
        assert f"max_tokens of {tokens - 1:,}" in body["message"]
        assert body["errors"][0]["loc"] == ["body", "max_tokens"]
    assert count(svc, StudyRow) == 0 and count(svc, JobRow) == 0
    # exactly at the caps is fine
    create(svc, study_body(max_jobs=20, max_tokens=10 * (16 + 32) * 128 * 8))


def test_service_max_study_jobs(db_backend, tmp_path, settings_factory, admin_token):
    from svc_fakes import FakeCluster

    settings = settings_factory(db_backend, tmp_path, max_study_jobs=19)
    app = create_app(settings, backend=FakeCluster(nodes=[{"CPU": 64.0}]), start_scheduler=False)
    h = {"Authorization": f"Bearer {admin_token}"}
    with TestClient(app) as c:
        for path in ("/v1/studies/plan", "/v1/studies"):
            r = c.post(path, json=study_body(), headers=h)
            assert r.status_code == 422, r.text
            msg = r.json()["message"]
            assert "20 jobs (12 tuning, 8 final)" in msg and "limit of 19 (max_study_jobs)" in msg
        # a study's own max_jobs cannot raise it
        r = c.post("/v1/studies", json=study_body(max_jobs=100), headers=h)
        assert r.status_code == 422 and "max_study_jobs" in r.json()["message"]
        r = c.post("/v1/studies", json=study_body(seeds=[1]), headers=h)
        assert r.status_code == 202 and r.json()["plan"]["jobs"] == 16


def test_a_study_that_cannot_fit_the_cluster_is_rejected(svc):
    svc.cluster.nodes = [{"CPU": 1.0}]  # every job needs 2 workers of 1 CPU
    r = svc.client.post("/v1/studies", json=study_body(), headers=svc.alice)
    assert r.status_code == 422, r.text
    assert count(svc, StudyRow) == 0


def test_a_study_job_cannot_be_deleted_alone(svc):
    study = create(svc, study_body(batch_sizes=[16], tuning={"trials": 2}))
    svc.tick()
    job_id = trial_ids(study)[(16, "alto", 0)]
    report(svc, job_id, curve(2.0))
    end(svc, job_id)
    svc.tick()
    job = svc.client.get(f"/v1/jobs/{job_id}", headers=svc.alice).json()
    assert job["study_id"] == study["id"]
    r = svc.client.delete(f"/v1/jobs/{job_id}", headers=svc.alice)
    assert r.status_code == 409, r.status_code
    assert f"DELETE /v1/studies/{study['id']}" in r.json()["message"]
