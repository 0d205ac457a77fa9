"""End to end on a real local Ray: a comparison of ALTO and AdamW trained by the real
engine (`python -m engine.run`) through the job API, and a service killed mid-job that
re-attaches after its restart.

The restart test runs `standin_engine.py`, which reports metrics exactly as `engine.run`
does (buffered, retried, with the job's token) at a pace the test controls, so the kill
lands mid-job every time without paying for training twice.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from svc_fakes import tiny_spec
from svc_proc import ServiceProcess

from service.localray import LocalRayHead, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

STANDIN = Path(__file__).resolve().parent / "standin_engine.py"
ADMIN = "alto_ray_test_admin_token"
H = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRayHead]:
    log = tmp_path_factory.mktemp("ray") / "head.log"
    with LocalRayHead(num_cpus=2, log_path=log) as head:
        yield head


REAL_ENGINE = f"{sys.executable} -m engine.run"


def standin(step_s: float) -> str:
    return f"env STANDIN_STEP_S={step_s} {sys.executable} {STANDIN}"


def service(tmp_path: Path, head: LocalRayHead, port: int, entrypoint: str) -> ServiceProcess:
    env = {
        "ALTO_DATA_DIR": str(tmp_path / "data"),
        "ALTO_RAY_ADDRESS": head.dashboard_url,
        "ALTO_RAY_AUTH_TOKEN": head.auth_token,  # the local head always has token auth on
        "ALTO_ADMIN_TOKEN": ADMIN,
        "ALTO_SCHEDULER_INTERVAL_S": "0.5",
        "ALTO_ENGINE_ENTRYPOINT": entrypoint,
    }
    return ServiceProcess(port, env, tmp_path / "service.log")


def wait_for(fn, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; last: {last}")


def test_comparison_end_to_end(ray_head: LocalRayHead, tmp_path: Path) -> None:
    svc = service(tmp_path, ray_head, free_port(), REAL_ENGINE).start()
    try:
        c = httpx.Client(base_url=svc.url, headers=H, timeout=30)
        # database and Ray both answer (200 only then)
        wait_for(lambda: c.get("/readyz").status_code == 200, 120, "/readyz")
        spec = tiny_spec()
        spec["data"] = {"max_bytes": 300_000}  # a slice of the stdlib corpus: quick to tokenize
        body = {
            "spec": spec,
            "arms": [
                {"name": "alto", "optimizer": {"name": "alto"}},
                {"name": "adamw", "optimizer": {"name": "adamw"}},
            ],
            "seeds": [0],
            "baseline": "adamw",
        }
        r = c.post("/v1/comparisons", json=body)
        assert r.status_code == 202, r.text
        cid = r.json()["id"]

        def done():
            comp = c.get(f"/v1/comparisons/{cid}").json()
            return comp if comp["status"] in ("SUCCEEDED", "FAILED", "CANCELLED") else None

        try:
            comp = wait_for(done, 300, "the comparison's jobs to end")
        except AssertionError:
            comp = c.get(f"/v1/comparisons/{cid}").json()
            logs = {
                j: c.get(f"/v1/jobs/{j}/logs").text[-3000:]
                for a in comp["arms"]
                for j in a["job_ids"]
            }
            raise AssertionError(f"comparison did not end: {comp}\nlogs: {logs}") from None
        assert comp["status"] == "SUCCEEDED", comp
        arms = {a["name"]: a for a in comp["arms"]}
        hist = {}
        for name, arm in arms.items():
            (jid,) = arm["job_ids"]
            job = c.get(f"/v1/jobs/{jid}").json()
            assert job["status"] == "SUCCEEDED" and job["ray_job_id"] == f"alto-{jid}"
            assert job["spec"]["optimizer"]["name"] == name
            assert job["finished_at"] is not None
            assert "12/12" in c.get(f"/v1/jobs/{jid}/logs").text
            h = c.get(f"/v1/jobs/{jid}/metrics").json()
            hist[name] = {s["name"]: s for s in h["series"]}
            assert hist[name]["train/loss"]["steps"] == list(range(1, 13))
            assert hist[name]["val/loss"]["steps"] == [4, 8, 12]
        # the summary agrees with the histories
        base_final = hist["adamw"]["val/loss"]["values"][-1]
        alto_val = hist["alto"]["val/loss"]
        assert arms["adamw"]["final_val_loss_mean"] == base_final
        assert arms["alto"]["final_val_loss_mean"] == alto_val["values"][-1]
        assert arms["alto"]["best_val_loss_mean"] == min(alto_val["values"])
        assert arms["alto"]["val_loss_delta_vs_baseline"] == pytest.approx(
            alto_val["values"][-1] - base_final
        )
        first = next(
            (s for s, v in zip(alto_val["steps"], alto_val["values"]) if v <= base_final), None
        )
        assert arms["alto"]["reached_baseline"] is (first is not None)
        assert arms["alto"]["steps_to_baseline"] == first
        if first is not None:
            assert arms["alto"]["step_speedup_vs_baseline"] == pytest.approx(12 / first)
        assert arms["adamw"]["reached_baseline"] is True
        assert arms["adamw"]["steps_to_baseline"] == 12
        tps = {n: statistics.median(hist[n]["train/tokens_per_s"]["values"]) for n in hist}
        assert arms["alto"]["tokens_per_s_ratio"] == pytest.approx(tps["alto"] / tps["adamw"])
        mem = {n: max(hist[n]["mem/peak_rss_bytes"]["values"]) for n in hist}
        assert arms["alto"]["peak_memory_overhead_pct"] == pytest.approx(
            (mem["alto"] / mem["adamw"] - 1) * 100
        )
        state = {n: hist[n]["optim/state_bytes"]["values"][-1] for n in hist}
        assert arms["alto"]["optimizer_state_bytes_ratio"] == pytest.approx(
            state["alto"] / state["adamw"]
        )
        png = c.get(f"/v1/comparisons/{cid}/plot.png")
        assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
        assert 'alto_jobs{status="SUCCEEDED"} 2.0' in c.get("/metrics").text
    finally:
        svc.stop()


@pytest.mark.timeout(900)
def test_study_end_to_end(ray_head: LocalRayHead, tmp_path: Path) -> None:
    """A tiny study through the real scheduler, Ray Jobs and engine: its trials run, the
    service selects, runs the finals and summarizes with the engine's evaluation noise."""
    svc = service(tmp_path, ray_head, free_port(), REAL_ENGINE).start()
    try:
        c = httpx.Client(base_url=svc.url, headers=H, timeout=60)
        wait_for(lambda: c.get("/readyz").status_code == 200, 120, "/readyz")
        spec = tiny_spec(eval_interval=0)
        spec["data"] = {"max_bytes": 300_000}
        body = {
            "spec": spec,
            "arms": [
                {
                    "name": "alto",
                    "optimizer": {"name": "alto"},
                    "search": {"lr": {"low": 1e-2, "high": 1e-1}},
                },
                {
                    "name": "adamw",
                    "optimizer": {"name": "adamw"},
                    "search": {"lr": {"low": 1e-3, "high": 1e-2}},
                },
            ],
            "batch_sizes": [4, 8],
            "budget": {"steps": 6},
            "tuning": {"trials": 1},
            "seeds": [0],
            "baseline": "adamw",
            "evals_per_run": 2,
        }
        r = c.post("/v1/studies", json=body)
        assert r.status_code == 202, r.text
        study = r.json()
        assert study["plan"]["jobs"] == 8 and study["phase"] == "tuning"

        def ended():
            st = c.get(f"/v1/studies/{study['id']}").json()
            return st if st["phase"] in ("done", "cancelled") else None

        try:
            st = wait_for(ended, 840, "the study to end")
        except AssertionError:
            st = c.get(f"/v1/studies/{study['id']}").json()
            raise AssertionError(f"study did not end: {st['phase']} {st['jobs']}") from None
        assert st["status"] == "SUCCEEDED" and st["jobs"] == {"SUCCEEDED": 8}, st
        for batch in st["batches"]:
            assert batch["eval_noise"] is not None and batch["eval_noise"] > 0
            for arm in batch["arms"]:
                (trial,) = arm["trials"]
                assert trial["status"] == "SUCCEEDED" and trial["final_val_loss"] is not None
                assert arm["chosen"] == trial["params"]
                assert arm["final_val_loss_mean"] is not None
            # the finals train the chosen point: their specs carry its learning rate
            for arm in batch["arms"]:
                (job_id,) = arm["final_job_ids"]
                job = c.get(f"/v1/jobs/{job_id}").json()
                assert job["study_id"] == study["id"]
                assert job["spec"]["optimizer"]["lr"] == arm["chosen"]["lr"]
                assert job["spec"]["training"]["global_batch_size"] == batch["batch_size"]
        assert st["common_target"] is not None and st["findings"]
        png = c.get(f"/v1/studies/{study['id']}/plot.png")
        assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    finally:
        svc.stop()


def test_service_restart_mid_job_loses_nothing(ray_head: LocalRayHead, tmp_path: Path) -> None:
    port = free_port()
    svc = service(tmp_path, ray_head, port, standin(0.25)).start()
    try:
        c = httpx.Client(base_url=svc.url, headers=H, timeout=30)
        spec = tiny_spec(steps=40, eval_interval=10)
        job = c.post("/v1/jobs", json=spec).json()
        jid = job["id"]

        def some_points():
            j = c.get(f"/v1/jobs/{jid}").json()
            lm = j["latest_metrics"].get("train/loss")
            return j if j["status"] == "RUNNING" and lm and lm["step"] >= 3 else None

        wait_for(some_points, 180, "the job to run and report")
        svc.kill()  # a crash mid-job
        time.sleep(4)  # the job keeps running on Ray; its reports fail and are buffered
        svc = service(tmp_path, ray_head, port, standin(0.25)).start()
        c = httpx.Client(base_url=svc.url, headers=H, timeout=30)

        def ended():
            j = c.get(f"/v1/jobs/{jid}").json()
            return j if j["status"] in ("SUCCEEDED", "FAILED", "CANCELLED") else None

        final = wait_for(ended, 180, "the job to end after the restart")
        assert final["status"] == "SUCCEEDED", final
        h = {s["name"]: s for s in c.get(f"/v1/jobs/{jid}/metrics").json()["series"]}
        assert h["train/loss"]["steps"] == list(range(1, 41))
        assert h["val/loss"]["steps"] == [10, 20, 30, 40]
    finally:
        svc.stop()
