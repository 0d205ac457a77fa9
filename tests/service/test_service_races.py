"""Cancels that race the scheduler: whatever commits first, a cancelled job ends
CANCELLED, is stopped on Ray if it got there, and is never recorded as stopped by
someone else. Each test puts the API request at one exact point of a scheduler pass
(through the fake cluster's `before` hooks); the last one lets real threads collide."""

from __future__ import annotations

import random
import threading
import time

from svc_fakes import tiny_spec


def _submit(svc) -> dict:
    r = svc.client.post("/v1/jobs", json=tiny_spec(), headers=svc.alice)
    assert r.status_code == 202, r.text
    return r.json()


def _job(svc, job_id: str) -> dict:
    return svc.client.get(f"/v1/jobs/{job_id}", headers=svc.alice).json()


def _cancel(svc, job_id: str) -> None:
    r = svc.client.post(f"/v1/jobs/{job_id}/cancel", headers=svc.alice)
    assert r.status_code in (202, 409), r.text


def test_cancel_after_the_pass_read_the_job_ends_cancelled_not_failed(svc):
    job = _submit(svc)
    rid = f"alto-{job['id']}"
    svc.tick()
    svc.cluster.set(rid, "RUNNING")
    svc.tick()
    assert _job(svc, job["id"])["status"] == "RUNNING"
    # the pass has read the job (not cancelled); the owner cancels, Ray stops the job,
    # and only then does the pass ask Ray: it sees STOPPED with a stale "not cancelled"
    svc.cluster.before["state"] = lambda _rid: _cancel(svc, job["id"])
    svc.tick()
    assert svc.cluster.jobs[rid].status == "STOPPED"
    reasons = [_job(svc, job["id"])["status_reason"]]
    svc.tick()
    final = _job(svc, job["id"])
    reasons.append(final["status_reason"])
    assert final["status"] == "CANCELLED", final
    assert not any("outside" in (r or "") for r in reasons), reasons
    assert svc.app.state.svc.scheduler.stats.stale_writes == 1  # the write that lost


def test_cancel_while_admission_decides_keeps_the_job_off_ray(svc):
    job = _submit(svc)
    # the pass has listed the waiting job and asks the cluster for room; the owner
    # cancels it in that moment
    svc.cluster.before["capacity"] = lambda _: _cancel(svc, job["id"])
    svc.tick()
    assert svc.cluster.jobs == {}, "a cancelled job was submitted to Ray"
    assert svc.app.state.svc.scheduler.stats.stale_writes == 1  # the claim that lost
    final = _job(svc, job["id"])
    assert final["status"] == "CANCELLED" and final["ray_job_id"] is None
    svc.tick()
    assert svc.cluster.submissions == 0


def test_cancel_between_claim_and_ray_submission_stops_the_job(svc):
    job = _submit(svc)
    rid = f"alto-{job['id']}"
    # the submission id is on record, Ray has not heard of the job yet: the API's stop
    # finds nothing on Ray, so the scheduler must stop the job once Ray has it
    svc.cluster.before["submit"] = lambda _rid: _cancel(svc, job["id"])
    svc.tick()
    assert svc.cluster.jobs[rid].status == "PENDING"
    mid = _job(svc, job["id"])
    assert mid["status"] != "CANCELLED" and "cancellation requested" in mid["status_reason"]
    svc.tick()  # Ray has it now: stop it
    assert svc.cluster.jobs[rid].status == "STOPPED"
    svc.tick()
    assert _job(svc, job["id"])["status"] == "CANCELLED"


def test_concurrent_cancels_and_scheduler_passes_end_every_job_cancelled(svc):
    n = 24
    svc.cluster.nodes = [{"CPU": 1000.0}]
    jobs = [_submit(svc)["id"] for _ in range(n)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def scheduler() -> None:
        try:
            while not stop.is_set():
                svc.tick()
                for fake in list(svc.cluster.jobs.values()):  # Ray starts what it gets
                    if fake.status == "PENDING" and random.random() < 0.5:
                        fake.status = "RUNNING"
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    def canceller(mine: list[str]) -> None:
        try:
            for job_id in mine:
                time.sleep(random.uniform(0, 0.02))
                _cancel(svc, job_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=scheduler)] + [
        threading.Thread(target=canceller, args=(jobs[i::3],)) for i in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join(60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = [_job(svc, j)["status"] for j in jobs]
        if all(s == "CANCELLED" for s in states):
            break
        time.sleep(0.05)
    stop.set()
    threads[0].join(30)
    assert not errors, errors
    final = [_job(svc, j) for j in jobs]
    assert [j["status"] for j in final] == ["CANCELLED"] * n, [
        (j["status"], j["status_reason"]) for j in final
    ]
    for j in final:
        fake = svc.cluster.jobs.get(f"alto-{j['id']}")
        assert fake is None or fake.status == "STOPPED", (j["id"], fake)
        assert (fake is None) == (j["ray_job_id"] is None)
