"""API behaviour against the real app and database (SQLite; PostgreSQL when configured)."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
from svc_fakes import tiny_spec


def submit(svc, headers=None, spec=None, **kw):
    r = svc.client.post("/v1/jobs", json=spec or tiny_spec(), headers=headers or svc.alice, **kw)
    assert r.status_code == 202, r.text
    return r.json()


def post_points(svc, job_id, points, token=None):
    token = token or svc.ingest_token(job_id)
    return svc.client.post(
        f"/v1/jobs/{job_id}/metrics",
        json={"points": points},
        headers={"Authorization": f"Bearer {token}"},
    )


def pts(name, values, start_step=1, t0=1000.0):
    return [
        {"step": start_step + i, "name": name, "value": v, "time": t0 + i}
        for i, v in enumerate(values)
    ]


def test_submit_returns_202_location_and_pending_job(svc):
    r = svc.client.post("/v1/jobs", json=tiny_spec(), headers=svc.alice)
    assert r.status_code == 202
    job = r.json()
    assert job["status"] == "PENDING"
    assert job["owner"] == "alice"
    assert job["tags"] == ["t1"]
    assert r.headers["location"].endswith(f"/v1/jobs/{job['id']}")
    got = svc.client.get(r.headers["location"], headers=svc.alice).json()
    assert got["id"] == job["id"]
    assert got["spec"]["training"]["steps"] == 12
    assert got["spec"]["report"] is None


def test_idempotency_key_returns_the_same_job(svc):
    h = {**svc.alice, "Idempotency-Key": "k-1"}
    a = submit(svc, h)
    b = submit(svc, h)
    assert a["id"] == b["id"]
    listed = svc.client.get("/v1/jobs", headers=svc.alice).json()["items"]
    assert [j["id"] for j in listed] == [a["id"]]
    other = tiny_spec(steps=13)
    r = svc.client.post("/v1/jobs", json=other, headers=h)
    assert r.status_code == 409
    assert "Idempotency-Key" in r.json()["message"]
    # the same key of another user is another job
    c = submit(svc, {**svc.bob, "Idempotency-Key": "k-1"})
    assert c["id"] != a["id"]


def test_list_filters_and_cursor_pagination(svc):
    ids = [submit(svc, spec={**tiny_spec(), "tags": [f"g{i % 2}"]})["id"] for i in range(5)]
    submit(svc, svc.bob)
    page1 = svc.client.get("/v1/jobs?limit=2", headers=svc.alice).json()
    assert [j["id"] for j in page1["items"]] == ids[::-1][:2]
    page2 = svc.client.get(
        f"/v1/jobs?limit=2&cursor={page1['next_cursor']}", headers=svc.alice
    ).json()
    page3 = svc.client.get(
        f"/v1/jobs?limit=2&cursor={page2['next_cursor']}", headers=svc.alice
    ).json()
    seen = [j["id"] for p in (page1, page2, page3) for j in p["items"]]
    assert seen == ids[::-1]
    assert page3["next_cursor"] is None
    g0 = svc.client.get("/v1/jobs?tag=g0", headers=svc.alice).json()["items"]
    assert sorted(j["id"] for j in g0) == sorted(ids[0::2])
    svc.client.post(f"/v1/jobs/{ids[1]}/cancel", headers=svc.alice)
    cancelled = svc.client.get("/v1/jobs?status=CANCELLED", headers=svc.alice).json()["items"]
    assert [j["id"] for j in cancelled] == [ids[1]]
    everyone = svc.client.get("/v1/jobs?limit=100", headers=svc.admin).json()["items"]
    assert len(everyone) == 6
    bobs = svc.client.get("/v1/jobs?owner=bob", headers=svc.admin).json()["items"]
    assert [j["owner"] for j in bobs] == ["bob"]


def test_lifecycle_follows_ray(svc):
    job = submit(svc)
    svc.tick()
    rid = f"alto-{job['id']}"
    assert rid in svc.cluster.jobs
    j = svc.client.get(f"/v1/jobs/{job['id']}", headers=svc.alice).json()
    assert j["status"] == "QUEUED" and j["ray_job_id"] == rid
    # the engine gets the spec with the report section filled in
    env = svc.cluster.jobs[rid]
    assert env.entrypoint == "python -m engine.run env:ALTO_JOB_SPEC"
    assert env.spec["report"]["job_id"] == job["id"]
    assert env.spec["report"]["url"] == "http://127.0.0.1:9"
    svc.cluster.set(rid, "RUNNING")
    svc.tick()
    j = svc.client.get(f"/v1/jobs/{job['id']}", headers=svc.alice).json()
    assert j["status"] == "RUNNING" and j["started_at"] is not None
    started = j["started_at"]
    svc.cluster.set(rid, "FAILED", "Job entrypoint command failed with exit code 1")
    svc.tick()
    j = svc.client.get(f"/v1/jobs/{job['id']}", headers=svc.alice).json()
    assert j["status"] == "FAILED"
    assert "exit code 1" in j["status_reason"]
    assert j["started_at"] == started  # set once, when it first ran
    assert started.endswith(("Z", "+00:00")) and j["finished_at"].endswith(("Z", "+00:00"))
    assert datetime.fromisoformat(started) <= datetime.fromisoformat(j["finished_at"])


def test_admission_waits_for_resources_in_order(svc):
    jobs = [submit(svc) for _ in range(3)]  # 1 CPU each on a 2-CPU cluster
    svc.tick()
    states = [svc.client.get(f"/v1/jobs/{j['id']}", headers=svc.alice).json() for j in jobs]
    assert [s["ray_job_id"] is not None for s in states] == [True, True, False]
    assert states[2]["status"] == "QUEUED"
    assert "waiting for resources" in states[2]["status_reason"]
    svc.cluster.set(f"alto-{jobs[0]['id']}", "SUCCEEDED")
    svc.tick(2)
    third = svc.client.get(f"/v1/jobs/{jobs[2]['id']}", headers=svc.alice).json()
    assert third["ray_job_id"] == f"alto-{jobs[2]['id']}"


def test_job_that_can_never_fit_is_rejected_at_submission(svc):
    spec = tiny_spec()
    spec["resources"] = {"workers": 4, "device": "cpu"}
    spec["training"]["global_batch_size"] = 16
    r = svc.client.post("/v1/jobs", json=spec, headers=svc.alice)
    assert r.status_code == 422
    assert "4 CPU" in r.json()["message"] and "2 CPU" in r.json()["message"]
    gpu = tiny_spec()
    gpu["resources"] = {"workers": 1, "device": "gpu"}
    r = svc.client.post("/v1/jobs", json=gpu, headers=svc.alice)
    assert r.status_code == 422 and "GPU" in r.json()["message"]


def test_resubmits_when_ray_lost_an_unstarted_job(svc):
    job = submit(svc)
    svc.tick()
    rid = f"alto-{job['id']}"
    first_token = svc.ingest_token(job["id"])
    del svc.cluster.jobs[rid]  # e.g. the submit never reached Ray
    svc.tick()
    assert rid in svc.cluster.jobs
    assert svc.ingest_token(job["id"]) != first_token
    # only the new token is accepted
    assert post_points(svc, job["id"], pts("train/loss", [1.0]), first_token).status_code == 401
    assert post_points(svc, job["id"], pts("train/loss", [1.0])).status_code == 200


def test_running_job_lost_by_ray_fails_with_reason(svc):
    job = submit(svc)
    svc.tick()
    rid = f"alto-{job['id']}"
    svc.cluster.set(rid, "RUNNING")
    svc.tick()
    del svc.cluster.jobs[rid]
    svc.tick()
    j = svc.client.get(f"/v1/jobs/{job['id']}", headers=svc.alice).json()
    assert j["status"] == "FAILED" and "no record" in j["status_reason"]


def test_cancel_queued_and_running(svc):
    a, b = submit(svc), submit(svc)
    r = svc.client.post(f"/v1/jobs/{a['id']}/cancel", headers=svc.alice)
    assert r.status_code == 202 and r.json()["status"] == "CANCELLED"
    svc.tick()
    rid = f"alto-{b['id']}"
    svc.cluster.set(rid, "RUNNING")
    svc.tick()
    r = svc.client.post(f"/v1/jobs/{b['id']}/cancel", headers=svc.alice)
    assert r.status_code == 202
    assert rid in svc.cluster.stops
    svc.tick()
    j = svc.client.get(f"/v1/jobs/{b['id']}", headers=svc.alice).json()
    assert j["status"] == "CANCELLED"
    r = svc.client.post(f"/v1/jobs/{b['id']}/cancel", headers=svc.alice)
    assert r.status_code == 409
    assert rid not in [k for k in svc.cluster.jobs if k == f"alto-{a['id']}"]


def test_logs_come_from_ray(svc):
    job = submit(svc)
    assert svc.client.get(f"/v1/jobs/{job['id']}/logs", headers=svc.alice).text == ""
    svc.tick()
    svc.cluster.jobs[f"alto-{job['id']}"].logs = "step 1 loss 5.0\nstep 2 loss 4.0\n"
    r = svc.client.get(f"/v1/jobs/{job['id']}/logs", headers=svc.alice)
    assert r.status_code == 200 and "step 2 loss 4.0" in r.text
    r = svc.client.get(f"/v1/jobs/{job['id']}/logs?tail_bytes=5", headers=svc.alice)
    assert r.text == "4.0\n\n"[:0] + r.text and len(r.text) == 5
    svc.cluster.reachable = False
    r = svc.client.get(f"/v1/jobs/{job['id']}/logs", headers=svc.alice)
    assert r.status_code == 503


def test_ingestion_is_idempotent_and_bulk(svc):
    job = submit(svc)
    svc.tick()
    batch = pts("train/loss", [5.0, 4.0, 3.0]) + pts("val/loss", [4.5], start_step=3)
    r = post_points(svc, job["id"], batch)
    assert r.status_code == 200 and r.json() == {"accepted": 4, "duplicates": 0}
    r = post_points(svc, job["id"], batch + pts("train/loss", [2.5], start_step=4))
    assert r.json() == {"accepted": 1, "duplicates": 4}
    j = svc.client.get(f"/v1/jobs/{job['id']}", headers=svc.alice).json()
    assert j["latest_metrics"]["train/loss"]["step"] == 4
    assert j["latest_metrics"]["train/loss"]["value"] == 2.5
    assert j["latest_metrics"]["val/loss"]["value"] == 4.5


def test_non_finite_values_are_kept_and_served_as_null(svc):
    job = submit(svc)
    svc.tick()
    body = (
        '{"points": [{"step": 1, "name": "train/loss", "value": NaN, "time": 1.0},'
        ' {"step": 2, "name": "train/loss", "value": Infinity, "time": 2.0}]}'
    )
    r = svc.client.post(
        f"/v1/jobs/{job['id']}/metrics",
        content=body,
        headers={
            "Authorization": f"Bearer {svc.ingest_token(job['id'])}",
            "Content-Type": "application/json",
        },
    )
    assert r.status_code == 200, r.text
    h = svc.client.get(f"/v1/jobs/{job['id']}/metrics", headers=svc.alice).json()
    assert h["series"][0]["values"] == [None, None]
    assert h["series"][0]["steps"] == [1, 2]


def test_metric_history_filters_and_downsampling(svc):
    job = submit(svc)
    svc.tick()
    values = [10.0 - i * 0.001 for i in range(5000)]
    values[1234] = 50.0  # a spike that must survive downsampling
    values[4321] = -3.0
    assert post_points(svc, job["id"], pts("train/loss", values)).status_code == 200
    assert post_points(svc, job["id"], pts("val/loss", [9.0, 8.0])).status_code == 200
    url = f"/v1/jobs/{job['id']}/metrics"
    full = svc.client.get(f"{url}?names=train/loss&max_points=100000", headers=svc.alice).json()
    assert [s["name"] for s in full["series"]] == ["train/loss"]
    assert full["downsampled"] is False and len(full["series"][0]["steps"]) == 5000
    small = svc.client.get(f"{url}?names=train/loss&max_points=100", headers=svc.alice).json()
    s = small["series"][0]
    assert small["downsampled"] is True and s["downsampled"] is True
    assert len(s["steps"]) <= 100 and s["total_points"] == 5000
    # rollups of 2**6 steps (2**5 would give 157 buckets): each point is a bucket's last
    # step with the mean of its values, and the bucket's extremes in mins/maxs
    assert len(s["steps"]) == 79 and s["steps"][0] == 63 and s["steps"][-1] == 5000
    assert s["steps"][1] == 127 and s["values"][1] == pytest.approx(sum(values[63:127]) / 64)
    assert 50.0 in s["maxs"] and -3.0 in s["mins"]  # spikes survive as extremes
    assert s["steps"] == sorted(s["steps"])
    since = svc.client.get(f"{url}?since_step=4998&names=train/loss,val/loss", headers=svc.alice)
    series = {x["name"]: x["steps"] for x in since.json()["series"]}
    assert series == {"train/loss": [4999, 5000]}


def test_events_stream_status_and_points(svc):
    job = submit(svc)
    svc.tick()
    rid = f"alto-{job['id']}"
    post_points(svc, job["id"], pts("train/loss", [3.0, 2.0]))
    svc.cluster.set(rid, "SUCCEEDED")
    svc.tick()
    with svc.client.stream("GET", f"/v1/jobs/{job['id']}/events", headers=svc.alice) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    assert "event: status" in text and '"SUCCEEDED"' in text
    assert "event: metrics" in text and '"train/loss"' in text
    last_id = [ln for ln in text.splitlines() if ln.startswith("id:")][-1].split(":", 1)[1].strip()
    # resuming after the last id sends no old points again
    with svc.client.stream(
        "GET",
        f"/v1/jobs/{job['id']}/events",
        headers={**svc.alice, "Last-Event-ID": last_id},
    ) as r:
        again = "".join(r.iter_text())
    assert "event: status" in again and "event: metrics" not in again


def _comparison_body(seeds=(1, 2)):
    return {
        "spec": tiny_spec(),
        "arms": [
            {"name": "alto", "optimizer": {"name": "alto"}},
            {"name": "adamw", "optimizer": {"name": "adamw", "weight_decay": 0.1}},
        ],
        "seeds": list(seeds),
        "baseline": "adamw",
    }


def test_comparison_creates_one_job_per_arm_and_seed(svc):
    r = svc.client.post("/v1/comparisons", json=_comparison_body(), headers=svc.alice)
    assert r.status_code == 202, r.text
    comp = r.json()
    assert r.headers["location"].endswith(f"/v1/comparisons/{comp['id']}")
    assert [a["name"] for a in comp["arms"]] == ["alto", "adamw"]
    jobs = {
        jid: svc.client.get(f"/v1/jobs/{jid}", headers=svc.alice).json()
        for a in comp["arms"]
        for jid in a["job_ids"]
    }
    assert len(jobs) == 4
    specs = [j["spec"] for j in jobs.values()]
    for spec in specs:  # identical except optimizer, seed and name
        a = {k: v for k, v in spec.items() if k not in ("optimizer", "training", "name")}
        b = {k: v for k, v in specs[0].items() if k not in ("optimizer", "training", "name")}
        assert a == b
        ta = {k: v for k, v in spec["training"].items() if k != "seed"}
        assert ta == {k: v for k, v in specs[0]["training"].items() if k != "seed"}
    alto = [j for j in jobs.values() if j["arm"] == "alto"]
    assert sorted(j["seed"] for j in alto) == [1, 2]
    # paper defaults for a batch of 8 (< 1K): alpha 0.5, beta1 0.01
    assert alto[0]["spec"]["optimizer"]["alpha"] == 0.5
    assert alto[0]["spec"]["optimizer"]["beta1"] == 0.01
    adamw = [j for j in jobs.values() if j["arm"] == "adamw"]
    assert adamw[0]["spec"]["optimizer"]["weight_decay"] == 0.1
    assert all(j["comparison_id"] == comp["id"] for j in jobs.values())


def test_comparisons_list_newest_first_with_status_and_visibility(svc):
    ids = []
    for _ in range(3):
        r = svc.client.post("/v1/comparisons", json=_comparison_body(seeds=(1,)), headers=svc.alice)
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    bobs = svc.client.post("/v1/comparisons", json=_comparison_body(), headers=svc.bob).json()
    page1 = svc.client.get("/v1/comparisons?limit=2", headers=svc.alice).json()
    page2 = svc.client.get(
        f"/v1/comparisons?limit=2&cursor={page1['next_cursor']}", headers=svc.alice
    ).json()
    assert [c["id"] for c in page1["items"] + page2["items"]] == ids[::-1]
    assert page2["next_cursor"] is None
    first = page1["items"][0]
    assert first["arms"] == ["alto", "adamw"] and first["baseline"] == "adamw"
    assert first["seeds"] == [1] and first["jobs"] == 2 and first["status"] == "PENDING"
    # the status is the most severe of the jobs': one cancelled job marks it
    newest = svc.client.get(f"/v1/comparisons/{ids[-1]}", headers=svc.alice).json()
    svc.client.post(f"/v1/jobs/{newest['arms'][0]['job_ids'][0]}/cancel", headers=svc.alice)
    listed = svc.client.get("/v1/comparisons", headers=svc.alice).json()["items"]
    detail = svc.client.get(f"/v1/comparisons/{ids[-1]}", headers=svc.alice).json()
    assert listed[0]["status"] == detail["status"] == "CANCELLED"
    assert listed[1]["status"] == "PENDING"
    # users see only their own; admins everyone's, or one owner's
    assert [
        c["id"] for c in svc.client.get("/v1/comparisons", headers=svc.bob).json()["items"]
    ] == [bobs["id"]]
    assert svc.client.get("/v1/comparisons?owner=bob", headers=svc.alice).json()["items"] == []
    everyone = svc.client.get("/v1/comparisons", headers=svc.admin).json()["items"]
    assert {c["owner"] for c in everyone} == {"alice", "bob"} and len(everyone) == 4
    only_bob = svc.client.get("/v1/comparisons?owner=bob", headers=svc.admin).json()["items"]
    assert [c["id"] for c in only_bob] == [bobs["id"]]


def test_comparison_summary_numbers(svc):
    svc.cluster.nodes = [{"CPU": 8.0}]  # room for all four jobs at once
    comp = svc.client.post("/v1/comparisons", json=_comparison_body(), headers=svc.alice).json()
    svc.tick()
    curves = {  # val/loss at steps 4, 8, 12
        ("alto", 1): [4.0, 3.0, 2.0],
        ("alto", 2): [4.2, 3.2, 2.2],
        ("adamw", 1): [4.5, 3.6, 2.9],
        ("adamw", 2): [4.5, 3.4, 3.1],
    }
    mem = {"alto": 1200.0, "adamw": 1000.0}
    state_bytes = {"alto": 300.0, "adamw": 200.0}
    tps = {"alto": 90.0, "adamw": 100.0}
    for arm in comp["arms"]:
        for seed, jid in zip(arm["seeds"], arm["job_ids"]):
            name = arm["name"]
            val = curves[(name, seed)]
            points = [
                {"step": 4 * (i + 1), "name": "val/loss", "value": v, "time": 100.0 + 10 * (i + 1)}
                for i, v in enumerate(val)
            ]
            points += pts("train/loss", [5.0] * 12, t0=100.0)
            points += pts("train/tokens_per_s", [tps[name]] * 12)
            points += pts("mem/peak_rss_bytes", [mem[name]], start_step=12)
            points += pts("optim/state_bytes", [state_bytes[name]], start_step=12)
            assert post_points(svc, jid, points).status_code == 200
    got = svc.client.get(f"/v1/comparisons/{comp['id']}", headers=svc.alice).json()
    arms = {a["name"]: a for a in got["arms"]}
    alto, adamw = arms["alto"], arms["adamw"]
    assert adamw["final_val_loss_mean"] == 3.0
    assert abs(alto["final_val_loss_mean"] - 2.1) < 1e-12
    assert abs(alto["final_val_loss_std"] - 0.1414213562373095) < 1e-9
    assert abs(alto["val_loss_delta_vs_baseline"] - (-0.9)) < 1e-12
    assert adamw["val_loss_delta_vs_baseline"] == 0.0
    # target 3.0: alto seed 1 reaches it at step 8, seed 2 (3.2 at 8) at step 12
    assert alto["reached_baseline"] is True
    assert alto["steps_to_baseline"] == 10.0
    assert alto["step_speedup_vs_baseline"] == 12.0 / 10.0
    # time origin = first train/loss point (t=100); step 8 at t=120, step 12 at t=130
    assert alto["wall_time_to_baseline_s"] == 25.0
    # adamw seed 2 ends at 3.1 > 3.0: the baseline itself did not reach its mean on all seeds
    assert adamw["reached_baseline"] is False and adamw["steps_to_baseline"] is None
    assert abs(alto["peak_memory_overhead_pct"] - 20.0) < 1e-9
    assert alto["optimizer_state_bytes_ratio"] == 1.5
    assert alto["tokens_per_s_ratio"] == 0.9
    assert adamw["tokens_per_s_ratio"] == 1.0
    assert got["status"] == "QUEUED"
    png = svc.client.get(f"/v1/comparisons/{comp['id']}/plot.png", headers=svc.alice)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n" and len(png.content) > 10_000


def test_comparison_rejects_arm_that_breaks_the_spec(svc):
    body = _comparison_body()
    body["arms"][0]["optimizer"] = {"name": "alto", "alpha": 5.0, "beta1": 0.5}  # |alpha| >= 2
    r = svc.client.post("/v1/comparisons", json=body, headers=svc.alice)
    assert r.status_code == 422
    locs = [e["loc"] for e in r.json()["errors"]]
    assert ["body", "arms", 0, "optimizer", "alpha"] in locs
    body = _comparison_body()
    body["baseline"] = "sgd"
    r = svc.client.post("/v1/comparisons", json=body, headers=svc.alice)
    assert r.status_code == 422 and "baseline" in r.json()["message"]


def test_comparison_idempotency(svc):
    h = {**svc.alice, "Idempotency-Key": "cmp-1"}
    a = svc.client.post("/v1/comparisons", json=_comparison_body(), headers=h).json()
    b = svc.client.post("/v1/comparisons", json=_comparison_body(), headers=h).json()
    assert a["id"] == b["id"]
    assert len(svc.client.get("/v1/jobs?limit=100", headers=svc.alice).json()["items"]) == 4


def test_health_ready_and_prometheus(svc):
    assert svc.client.get("/healthz").json() == {"status": "ok"}
    r = svc.client.get("/readyz")
    checks = {"database": "ok", "ray": "ok", "scheduler": "ok"}
    assert r.status_code == 200 and r.json()["checks"] == checks
    submit(svc)
    submit(svc)
    svc.client.get("/v1/jobs", headers=svc.alice)
    assert svc.client.get("/metrics").status_code == 401  # it counts every owner's jobs
    assert svc.client.get("/metrics", headers=svc.alice).status_code == 401
    text = svc.client.get("/metrics", headers=svc.admin).text
    assert 'alto_jobs{status="PENDING"} 2.0' in text
    assert "alto_queue_length 2.0" in text
    assert (
        'alto_http_request_duration_seconds_count{method="GET",route="/v1/jobs",status="200"} 1.0'
        in text
    )
    svc.tick(2)
    text = svc.client.get("/metrics", headers=svc.admin).text
    assert "alto_scheduler_pass_seconds_count 2.0" in text
    assert "alto_scheduler_stale_writes_total 0.0" in text
    svc.cluster.reachable = False
    svc.tick()
    text = svc.client.get("/metrics", headers=svc.admin).text
    assert "alto_scheduler_failed_passes_total 1.0" in text
    r = svc.client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["ray"] == "unreachable"
    assert r.json()["checks"]["scheduler"].startswith("error: last pass failed")


def test_scheduler_survives_an_unreachable_cluster(svc):
    job = submit(svc)
    svc.cluster.reachable = False
    svc.tick()
    assert svc.app.state.svc.scheduler.last_error
    svc.cluster.reachable = True
    svc.tick()
    j = svc.client.get(f"/v1/jobs/{job['id']}", headers=svc.alice).json()
    assert j["ray_job_id"] is not None


def test_background_scheduler_thread_advances_jobs(svc):
    sched = svc.app.state.svc.scheduler
    sched.start()
    try:
        job = submit(svc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and f"alto-{job['id']}" not in svc.cluster.jobs:
            time.sleep(0.05)
        assert f"alto-{job['id']}" in svc.cluster.jobs
    finally:
        sched.stop()


def test_cluster_without_nodes_fails_nothing(svc):
    job = submit(svc)
    svc.cluster.nodes = []
    svc.tick()
    j = svc.client.get(f"/v1/jobs/{job['id']}", headers=svc.alice).json()
    assert j["status"] == "PENDING" and j["ray_job_id"] is None
    assert "no alive nodes" in svc.app.state.svc.scheduler.last_error


def test_remote_backends_get_their_job_states_asked_concurrently(svc, monkeypatch):
    """A backend with state_concurrency = 4 must see 4 state() calls in flight at once:
    each call waits at a 4-party barrier, which sequential calls would never pass."""
    import threading

    svc.cluster.nodes = [{"CPU": 8.0}]
    jobs = [submit(svc) for _ in range(4)]
    svc.tick()  # launched (Ray knows them as PENDING)
    barrier = threading.Barrier(4, timeout=10)
    state = svc.cluster.state

    def waiting_state(submission_id):
        barrier.wait()
        return state(submission_id)

    monkeypatch.setattr(svc.cluster, "state", waiting_state)
    svc.cluster.state_concurrency = 4
    for job in jobs:
        svc.cluster.set(f"alto-{job['id']}", "RUNNING")
    svc.tick()
    assert svc.app.state.svc.scheduler.last_error is None
    statuses = [
        svc.client.get(f"/v1/jobs/{j['id']}", headers=svc.alice).json()["status"] for j in jobs
    ]
    assert statuses == ["RUNNING"] * 4


def test_summary_reads_only_what_it_needs_and_agrees_with_all_points(svc):
    """The summary loads validation loss and throughput in full, plus one point each for
    the time origin, peak memory and optimizer state; its numbers must be the ones
    computed from every point (the plot's load)."""
    import json
    import math
    import random

    from service.compare import summarize
    from service.db.tables import ComparisonRow
    from service.routers.comparisons import _runs

    svc.cluster.nodes = [{"CPU": 8.0}]
    comp = svc.client.post("/v1/comparisons", json=_comparison_body(), headers=svc.alice).json()
    svc.tick()
    rng = random.Random(3)
    for arm in comp["arms"]:
        for job_id in arm["job_ids"]:
            points = []
            for step in range(1, 41):
                t = 1000.0 + 2 * step + rng.random()
                points += [
                    {"step": step, "name": "train/loss", "value": 5 - step / 20, "time": t},
                    {
                        "step": step,
                        "name": "train/tokens_per_s",
                        "value": rng.uniform(900, 1100),
                        "time": t,
                    },
                    {
                        "step": step,
                        "name": "mem/peak_rss_bytes",
                        "value": rng.uniform(1e9, 2e9),
                        "time": t,
                    },
                ]
                if step % 4 == 0:
                    ahead = 0.5 if arm["name"] == "alto" else 0.0  # alto reaches the target
                    loss = 4.5 - step / 15 + rng.random() / 10 - ahead
                    value = math.nan if step == 8 else loss
                    points.append({"step": step, "name": "val/loss", "value": value, "time": t})
                if step in (1, 20, 40):
                    points.append(
                        {"step": step, "name": "optim/state_bytes", "value": 1e6 * step, "time": t}
                    )
            r = svc.client.post(  # json.dumps writes NaN, which the engine may send
                f"/v1/jobs/{job_id}/metrics",
                content=json.dumps({"points": points}),
                headers={
                    "Authorization": f"Bearer {svc.ingest_token(job_id)}",
                    "Content-Type": "application/json",
                },
            )
            assert r.status_code == 200, r.text
    served = svc.client.get(f"/v1/comparisons/{comp['id']}", headers=svc.alice).json()["arms"]
    with svc.app.state.svc.factory() as s:
        row = s.query(ComparisonRow).filter_by(id=comp["id"]).one()
        lean = summarize(_runs(s, row, curves=False), row.baseline)
        plotted = _runs(s, row, curves=True)
        full = summarize(_all_points(s, row), row.baseline)
    assert [a.model_dump() for a in lean] == [a.model_dump() for a in full]
    assert [a.model_dump() for a in summarize(plotted, row.baseline)] == [
        a.model_dump() for a in full
    ]
    for runs in plotted.values():  # the plot gets both loss curves whole
        for run in runs:
            assert run.get("train/loss").steps == list(range(1, 41))
            assert run.get("val/loss").steps == list(range(4, 41, 4))
    assert served == [a.model_dump(mode="json") for a in full]
    assert all(a["peak_memory_bytes_mean"] and a["optimizer_state_bytes"] == 4e7 for a in served)
    alto = next(a for a in served if a["name"] == "alto")
    assert alto["reached_baseline"] and alto["wall_time_to_baseline_s"] > 0  # from the origin


def _all_points(s, row):
    """Every point of every metric of a comparison's jobs, as RunData (the reference)."""
    from alto_client.models import JobStatus
    from sqlalchemy import select

    from service.compare import RunData, Series
    from service.db.tables import MetricRow

    arms, by_seq = {name: [] for name in row.arms}, {}
    for job in row.jobs:
        run = RunData(job_id=job.id, seed=int(job.seed or 0), status=JobStatus(job.status))
        arms[job.arm].append(run)
        by_seq[job.seq] = run
    q = (
        select(MetricRow.job_seq, MetricRow.name, MetricRow.step, MetricRow.value, MetricRow.time)
        .where(MetricRow.job_seq.in_(list(by_seq)))
        .order_by(MetricRow.job_seq, MetricRow.name, MetricRow.step)
    )
    for seq, name, step, value, t in s.execute(q):
        series = by_seq[seq].series.setdefault(name, Series())
        series.steps.append(step)
        series.values.append(float("nan") if value is None else value)
        series.times.append(t)
    return arms
