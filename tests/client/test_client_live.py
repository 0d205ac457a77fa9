"""The sync client against a live service: every call, pagination, errors, retries."""

from __future__ import annotations

import statistics
import uuid
from pathlib import Path

import pytest
from alto_client import errors
from alto_client.client import Client
from alto_client.models import JobStatus
from livesvc import TINY_SPEC, DroppingProxy, LiveService, free_port, simulated_curve

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def client(svc: LiveService) -> Client:
    with Client(svc.url, svc.admin_token, backoff=0.01) as c:
        yield c


def _spec(**training: object) -> dict:
    spec = {**TINY_SPEC, "training": {**TINY_SPEC["training"], **training}}
    spec["tags"] = [*TINY_SPEC["tags"], f"t{uuid.uuid4().hex[:8]}"]
    return spec


def test_submit_wait_metrics_and_logs(client: Client) -> None:
    job = client.submit(_spec())
    assert job.status in {JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RUNNING}
    assert job.spec["training"]["steps"] == 12
    final = client.wait(job.id, timeout=60, poll_interval=0.1)
    assert final.status == JobStatus.SUCCEEDED, final.status_reason
    assert final.latest_metrics["train/loss"].step == 12
    history = client.metrics(job.id, ["train/loss", "val/loss"])
    series = {s.name: s for s in history.series}
    assert set(series) == {"train/loss", "val/loss"}
    loss = series["train/loss"]
    assert loss.steps == list(range(1, 13)) and not loss.downsampled
    assert loss.values == pytest.approx([simulated_curve("adamw", 11, s) for s in range(1, 13)])
    assert series["val/loss"].steps == [4, 8, 12]
    later = client.metrics(job.id, "train/loss", since_step=10)
    assert later.series[0].steps == [11, 12]
    short = client.metrics(job.id, "train/loss", max_points=4)
    assert short.downsampled and short.series[0].steps[0] == 1 and short.series[0].steps[-1] == 12
    assert "training tiny-sim with adamw" in client.logs(job.id)


def test_idempotency_key_makes_one_job(client: Client) -> None:
    spec = _spec()
    key = uuid.uuid4().hex
    first = client.submit(spec, idempotency_key=key)
    again = client.submit(spec, idempotency_key=key)
    assert again.id == first.id
    assert client.submit(spec).id != first.id


def test_jobs_iterator_pages_through_everything(client: Client) -> None:
    spec = _spec()
    tag = spec["tags"][-1]
    ids = [client.submit(spec).id for _ in range(7)]
    page = client.jobs_page(tag=tag, limit=3)
    assert len(page.items) == 3 and page.next_cursor
    listed = [j.id for j in client.jobs(tag=tag, page_size=3)]
    assert listed == list(reversed(ids))  # newest first, no duplicates, none missing
    assert [j.id for j in client.jobs(tag=tag, page_size=2, limit=5)] == listed[:5]
    assert list(client.jobs(tag=f"none-{uuid.uuid4().hex[:6]}")) == []


def test_delete_an_ended_job_and_a_comparison(client: Client) -> None:
    job = client.submit(_spec())
    with pytest.raises(errors.Conflict, match="cancel it first"):
        client.delete(job.id)  # still queued or running
    client.wait(job.id, timeout=60, poll_interval=0.1)
    client.delete(job.id)
    with pytest.raises(errors.NotFound):
        client.job(job.id)
    with pytest.raises(errors.NotFound):
        client.delete(job.id)
    client.delete(job.id, missing_ok=True)
    comp = client.compare(_spec(), ["alto", "adamw"], 1)
    client.wait_comparison(comp.id, timeout=60, poll_interval=0.1)
    client.delete_comparison(comp.id)
    assert comp.id not in [c.id for c in client.comparisons()]
    client.delete_comparison(comp.id, missing_ok=True)


def test_comparisons_iterator_lists_what_compare_made(client: Client) -> None:
    made = [client.compare(_spec(), ["alto", "adamw"], 1).id for _ in range(3)]
    listed = [c.id for c in client.comparisons(page_size=2, limit=3)]
    assert listed == list(reversed(made))  # newest first, across pages
    newest = client.comparisons_page(limit=1).items[0]
    assert newest.id == made[-1] and newest.jobs == 2 and newest.baseline == "adamw"
    with pytest.raises(ValueError, match="page_size"):
        client.comparisons_page(limit=0)


def test_status_filter(client: Client) -> None:
    spec = _spec()
    tag = spec["tags"][-1]
    job = client.submit(spec)
    client.wait(job.id, timeout=60, poll_interval=0.1)
    assert [j.id for j in client.jobs(tag=tag, status="SUCCEEDED")] == [job.id]
    assert list(client.jobs(tag=tag, status=JobStatus.FAILED)) == []


def test_cancel_a_running_job(client: Client) -> None:
    job = client.submit(_spec(steps=5000))
    cancelled = client.cancel(job.id)
    assert cancelled.id == job.id
    final = client.wait(job.id, timeout=60, poll_interval=0.1)
    assert final.status == JobStatus.CANCELLED
    # cancelling an ended job is a conflict the server explains
    with pytest.raises(errors.Conflict, match="already ended"):
        client.cancel(job.id)


def test_stream_follows_a_job_to_its_end(client: Client) -> None:
    job = client.submit(_spec())
    events = list(client.stream(job.id))
    kinds = {e.kind for e in events}
    assert kinds <= {"status", "metrics"} and "status" in kinds
    assert events[-1].kind in {"status", "metrics"}
    final_status = [e.status for e in events if e.kind == "status"][-1]
    assert final_status == JobStatus.SUCCEEDED
    steps = sorted(
        p["step"]
        for e in events
        if e.kind == "metrics"
        for p in e.data["points"]
        if p["name"] == "train/loss"
    )
    assert steps == list(range(1, 13))


def test_stream_resumes_after_a_dropped_connection(svc: LiveService, client: Client) -> None:
    job = client.submit(_spec(steps=60))
    port = int(svc.url.rsplit(":", 1)[1])
    with (
        DroppingProxy(port, cut_stream=1) as proxy,
        Client(proxy.url, svc.admin_token, backoff=0.01) as flaky,
    ):
        events = list(flaky.stream(job.id))
        assert proxy.connections == 2  # cut once, resumed once
    points = [
        p["step"]
        for e in events
        if e.kind == "metrics"
        for p in e.data["points"]
        if p["name"] == "train/loss"
    ]
    assert points == list(range(1, 61))  # nothing missed, nothing repeated
    assert [e.status for e in events if e.kind == "status"][-1] == JobStatus.SUCCEEDED


def test_errors_carry_the_servers_message(svc: LiveService, client: Client) -> None:
    with pytest.raises(errors.NotFound) as info:
        client.job("0123456789abcdef")
    assert info.value.status_code == 404 and "0123456789abcdef" in info.value.message
    with pytest.raises(errors.ValidationFailed) as bad:
        client.request("POST", "/v1/jobs", json={"training": {"steps": 0, "lr": "fast"}})
    fields = {e.field for e in bad.value.field_errors}
    assert {"training.steps", "training.lr"} <= fields, bad.value.field_errors
    with (
        Client(svc.url, "alto_not_a_token", retries=1) as stranger,
        pytest.raises(errors.Unauthorized),
    ):
        stranger.job("0123456789abcdef")
    job = client.submit(_spec())
    with Client(svc.url, svc.token_for("mallory"), retries=1) as mallory:
        with pytest.raises(errors.NotFound):  # another owner's job does not exist for you
            mallory.job(job.id)
        with pytest.raises(errors.NotFound):
            mallory.cancel(job.id)


def test_spec_errors_are_caught_before_sending(client: Client) -> None:
    from alto_client.spec import SpecError

    with pytest.raises(SpecError) as info:
        client.submit({"model": {"hidden_size": 30, "num_attention_heads": 4}})
    assert any(p.field == "model.hidden_size" for p in info.value.problems)


def test_unreachable_server_raises_connection_failed() -> None:
    port = free_port()
    with (
        Client(f"http://127.0.0.1:{port}", "t", retries=2, backoff=0.01) as c,
        pytest.raises(errors.ConnectionFailed) as info,
    ):
        c.job("abc")
    assert f"127.0.0.1:{port}" in str(info.value) and info.value.attempts == 2
    with Client(f"http://127.0.0.1:{port}", "t") as c:
        assert c.health() is False


def test_retry_after_dropped_connections(svc: LiveService, client: Client) -> None:
    job = client.submit(_spec())
    port = int(svc.url.rsplit(":", 1)[1])
    with DroppingProxy(port, drop_before=2) as proxy:
        with Client(proxy.url, svc.admin_token, retries=4, backoff=0.01) as flaky:
            assert flaky.job(job.id).id == job.id
        assert proxy.connections == 3
    with DroppingProxy(port, drop_before=5) as proxy:
        with (
            Client(proxy.url, svc.admin_token, retries=3, backoff=0.01) as flaky,
            pytest.raises(errors.ConnectionFailed),
        ):
            flaky.job(job.id)
        assert proxy.connections == 3


def test_lost_answer_to_a_submission_does_not_make_two_jobs(
    svc: LiveService, client: Client
) -> None:
    spec = _spec()
    tag = spec["tags"][-1]
    port = int(svc.url.rsplit(":", 1)[1])
    with DroppingProxy(port, drop_after=1) as proxy:
        with Client(proxy.url, svc.admin_token, retries=3, backoff=0.01) as flaky:
            job = flaky.submit(spec)
        assert proxy.connections == 2  # the first answer was lost, the retry got one
    assert [j.id for j in client.jobs(tag=tag)] == [job.id]


def test_comparison_summary_matches_the_metric_histories(client: Client, tmp_path: Path) -> None:
    comp = client.compare(_spec(), ["alto", "adamw"], seeds=2, name="sim-compare")
    assert comp.baseline == "adamw" and comp.seeds == [11, 12]
    assert [a.name for a in comp.arms] == ["alto", "adamw"]
    assert all(len(a.job_ids) == 2 for a in comp.arms)
    done = client.wait_comparison(comp.id, timeout=90, poll_interval=0.2)
    assert done.status == JobStatus.SUCCEEDED
    finals = {}
    for arm in done.arms:
        vals = []
        for job_id in arm.job_ids:
            job = client.job(job_id)
            assert job.comparison_id == comp.id and job.arm == arm.name
            (series,) = client.metrics(job_id, "val/loss").series
            vals.append(series.values[-1])
        finals[arm.name] = statistics.mean(vals)
        assert arm.final_val_loss_mean == pytest.approx(finals[arm.name])
    alto = next(a for a in done.arms if a.name == "alto")
    assert alto.val_loss_delta_vs_baseline == pytest.approx(finals["alto"] - finals["adamw"])
    assert alto.reached_baseline is True
    assert alto.optimizer_state_bytes_ratio == pytest.approx(1.5)
    out = client.plot(comp.id, tmp_path / "plots" / "cmp.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
