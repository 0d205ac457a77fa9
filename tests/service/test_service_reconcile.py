"""`decide`: what the scheduler does with a launched job for every Ray state."""

from __future__ import annotations

import pytest
from alto_client.models import JobStatus
from hypothesis import given
from hypothesis import strategies as st

from service.cluster import RayJobState
from service.reconcile import STOPPING, WAITING_FOR_RAY, Action, JobView, decide


def view(status="QUEUED", reason=WAITING_FOR_RAY, cancel=False, started=False) -> JobView:
    return JobView(1, "alto-x", status, reason, cancel, started)


@pytest.mark.parametrize(
    ("job", "ray", "action", "status", "reason_has"),
    [
        (view(), RayJobState("PENDING"), Action.KEEP, None, None),
        (view(reason="x"), RayJobState("PENDING"), Action.SET, "QUEUED", "waiting for Ray"),
        (view(), RayJobState("RUNNING"), Action.SET, "RUNNING", None),
        (view("RUNNING", None, started=True), RayJobState("RUNNING"), Action.KEEP, None, None),
        (
            view("RUNNING", None, started=True),
            RayJobState("SUCCEEDED"),
            Action.SET,
            "SUCCEEDED",
            None,
        ),
        (view(), RayJobState("FAILED", "  boom\n"), Action.SET, "FAILED", "boom"),
        (view(), RayJobState("FAILED", ""), Action.SET, "FAILED", "the Ray job failed"),
        (view(), RayJobState("STOPPED"), Action.SET, "FAILED", "outside the service"),
        (view(cancel=True), RayJobState("STOPPED", "stopped"), Action.SET, "CANCELLED", "owner"),
        (view(cancel=True), RayJobState("PENDING"), Action.STOP, "QUEUED", STOPPING),
        (view(cancel=True), RayJobState("RUNNING"), Action.STOP, "RUNNING", STOPPING),
        (view(), None, Action.LAUNCH, None, None),
        (view(cancel=True), None, Action.SET, "CANCELLED", "before Ray started"),
        (view("RUNNING", None, started=True), None, Action.SET, "FAILED", "no record"),
        (view(), RayJobState("SOMETHING_NEW"), Action.KEEP, None, None),
    ],
)
def test_decide(job, ray, action, status, reason_has):
    d = decide(job, ray)
    assert d.action is action
    if status is None:
        assert d.status is None
    else:
        assert d.status == JobStatus(status)
    if reason_has is not None:
        assert reason_has in d.reason


def test_long_ray_messages_keep_their_end():
    d = decide(view(), RayJobState("FAILED", "x" * 5000 + "the real error"))
    assert len(d.reason) == 2000 and d.reason.endswith("the real error")


RAY = st.one_of(
    st.none(),
    st.builds(
        RayJobState,
        st.sampled_from(["PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED", "OTHER"]),
        st.one_of(st.none(), st.text(max_size=20)),
    ),
)
VIEWS = st.builds(
    JobView,
    st.just(1),
    st.just("alto-x"),
    st.sampled_from(["QUEUED", "RUNNING"]),
    st.one_of(st.none(), st.text(max_size=20)),
    st.booleans(),
    st.booleans(),
)


@given(VIEWS, RAY)
def test_decisions_respect_cancellation_and_are_idempotent(job, ray):
    d = decide(job, ray)
    if job.cancel_requested:
        # a cancelled job is stopped, or ends CANCELLED, or follows Ray to an end of its
        # own (it finished or failed before the stop landed): never "stopped by someone
        # else" and never relaunched
        assert d.action is not Action.LAUNCH
        if ray is not None and ray.status == "STOPPED":
            assert d.status is JobStatus.CANCELLED
    if d.action is Action.SET:
        # applying the decision and deciding again changes nothing more
        after = JobView(
            job.seq, job.ray_job_id, d.status.value, d.reason, job.cancel_requested, job.started
        )
        assert decide(after, ray).action is Action.KEEP
