"""Deleting ended jobs and comparisons, with their metric histories (SQLite and PostgreSQL)."""

from __future__ import annotations

from sqlalchemy import func, select
from svc_fakes import tiny_spec

from service import repo
from service.db.tables import ComparisonRow, JobRow, JobTag, MetricRow


def _submit(svc, headers=None) -> dict:
    r = svc.client.post("/v1/jobs", json=tiny_spec(), headers=headers or svc.alice)
    assert r.status_code == 202, r.text
    return r.json()


def _points(svc, job_id: str, n: int) -> None:
    token = svc.ingest_token(job_id)
    points = [
        {"step": i, "name": "train/loss", "value": 1.0 / i, "time": float(i)}
        for i in range(1, n + 1)
    ]
    r = svc.client.post(
        f"/v1/jobs/{job_id}/metrics",
        json={"points": points},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200 and r.json()["accepted"] == n


def _count(svc, table, *where) -> int:
    with svc.app.state.svc.factory() as s:
        return s.scalar(select(func.count()).select_from(table).where(*where))


def _finish(svc, job_id: str, status: str = "SUCCEEDED") -> None:
    svc.cluster.set(f"alto-{job_id}", status)
    svc.tick()


def test_delete_an_ended_job_with_its_history_in_batches(svc, monkeypatch):
    monkeypatch.setattr(repo, "DELETE_BATCH", 4)  # 10 points: three batches
    job, other = _submit(svc), _submit(svc)
    svc.tick()
    _points(svc, job["id"], 10)
    _points(svc, other["id"], 3)
    running = svc.client.delete(f"/v1/jobs/{job['id']}", headers=svc.alice)
    assert running.status_code == 409 and "cancel it first" in running.json()["message"]
    _finish(svc, job["id"])
    assert svc.client.delete(f"/v1/jobs/{job['id']}", headers=svc.bob).status_code == 404
    r = svc.client.delete(f"/v1/jobs/{job['id']}", headers=svc.alice)
    assert r.status_code == 204 and r.content == b""
    assert svc.client.get(f"/v1/jobs/{job['id']}", headers=svc.alice).status_code == 404
    assert svc.client.delete(f"/v1/jobs/{job['id']}", headers=svc.alice).status_code == 404
    assert _count(svc, JobRow, JobRow.id == job["id"]) == 0
    assert _count(svc, JobTag) == 1  # only the other job's tag is left
    assert _count(svc, MetricRow) == 3  # only the other job's points are left
    listed = svc.client.get("/v1/jobs", headers=svc.alice).json()["items"]
    assert [j["id"] for j in listed] == [other["id"]]
    # the admin may delete anyone's ended job
    svc.client.post(f"/v1/jobs/{other['id']}/cancel", headers=svc.alice)
    svc.tick()
    assert svc.client.delete(f"/v1/jobs/{other['id']}", headers=svc.admin).status_code == 204
    assert _count(svc, MetricRow) == 0


def test_a_comparisons_jobs_go_with_the_comparison(svc):
    svc.cluster.nodes = [{"CPU": 8.0}]
    body = {
        "spec": tiny_spec(),
        "arms": [
            {"name": "alto", "optimizer": {"name": "alto"}},
            {"name": "adamw", "optimizer": {"name": "adamw"}},
        ],
        "seeds": [1],
        "baseline": "adamw",
    }
    comp = svc.client.post("/v1/comparisons", json=body, headers=svc.alice).json()
    job_ids = [j for arm in comp["arms"] for j in arm["job_ids"]]
    svc.tick()
    for job_id in job_ids:
        _points(svc, job_id, 5)
    _finish(svc, job_ids[0])
    r = svc.client.delete(f"/v1/jobs/{job_ids[0]}", headers=svc.alice)
    assert r.status_code == 409 and comp["id"] in r.json()["message"]
    r = svc.client.delete(f"/v1/comparisons/{comp['id']}", headers=svc.alice)
    assert r.status_code == 409 and job_ids[1] in r.json()["message"]
    assert "1 unfinished" in r.json()["message"]
    _finish(svc, job_ids[1], "FAILED")
    assert svc.client.delete(f"/v1/comparisons/{comp['id']}", headers=svc.bob).status_code == 404
    r = svc.client.delete(f"/v1/comparisons/{comp['id']}", headers=svc.alice)
    assert r.status_code == 204
    assert svc.client.get(f"/v1/comparisons/{comp['id']}", headers=svc.alice).status_code == 404
    assert svc.client.get("/v1/comparisons", headers=svc.alice).json()["items"] == []
    for job_id in job_ids:
        assert svc.client.get(f"/v1/jobs/{job_id}", headers=svc.alice).status_code == 404
    assert _count(svc, ComparisonRow) == 0
    assert _count(svc, JobRow) == 0
    assert _count(svc, MetricRow) == 0
    assert _count(svc, JobTag) == 0
