"""Metric rollups (service.rollups): equal to a recomputation from the raw points after
any mix of duplicate, out-of-order and resumed uploads (SQLite; PostgreSQL when
ALTO_TEST_POSTGRES_URL is set), backfilled by migration 0004, read by histories at the
documented level, and deleted with their job."""

from __future__ import annotations

import json
import math
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text
from svc_fakes import tiny_spec

from service import repo
from service.db.migrate import upgrade
from service.db.session import make_engine, make_session_factory
from service.db.tables import ROLLUP_LEVELS, JobRow, MetricRollupRow, MetricRow
from service.rollups import (
    Bucket,
    fold,
    level_for,
    raw_columns,
    rolled_columns,
    rolled_series,
    series_info,
)


def _new_job(factory) -> int:
    with factory() as s:
        row = JobRow(
            id=uuid.uuid4().hex,
            name="rollups",
            owner="alice",
            status="RUNNING",
            spec={},
            resources={},
        )
        s.add(row)
        s.commit()
        return row.seq


def _stored(s, seq: int) -> dict[tuple[str, int, int], Bucket]:
    r = MetricRollupRow
    q = select(
        r.name, r.level, r.bucket, r.n, r.vn, r.vsum, r.vmin, r.vmax,
        r.last_step, r.last_value, r.last_time,
    ).where(r.job_seq == seq)  # fmt: skip
    return {(name, lv, b): Bucket(*rest) for name, lv, b, *rest in s.execute(q)}


def _recomputed(s, seq: int) -> dict[tuple[str, int, int], Bucket]:
    q = (
        select(MetricRow.step, MetricRow.name, MetricRow.value, MetricRow.time)
        .where(MetricRow.job_seq == seq)
        .order_by(MetricRow.name, MetricRow.step)
    )
    return fold(list(s.execute(q)))


def _same_value(a: float | None, b: float | None) -> bool:
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    return a == b


def assert_rollups_match(s, seq: int) -> None:
    stored, expected = _stored(s, seq), _recomputed(s, seq)
    assert set(stored) == set(expected)
    for key, want in expected.items():
        got = stored[key]
        assert (got.n, got.vn, got.vmin, got.vmax) == (want.n, want.vn, want.vmin, want.vmax), key
        assert got.vsum == pytest.approx(want.vsum, rel=1e-9, abs=1e-9), key
        assert (got.last_step, got.last_time) == (want.last_step, want.last_time), key
        assert _same_value(got.last_value, want.last_value), key


values = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0]),
)
steps = st.one_of(st.integers(0, 300), st.integers(0, 2**20))
point = st.tuples(steps, st.sampled_from(["train/loss", "train/lr", "val/loss"]), values)
uploads = st.lists(st.lists(point, min_size=1, max_size=40), min_size=1, max_size=6)


@pytest.fixture
def factory(db_backend, settings_factory, tmp_path):
    s = settings_factory(db_backend, tmp_path)
    engine = make_engine(s.resolved_database_url(), pool_size=2)
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batches=uploads, data=st.data())
def test_rollups_equal_a_recomputation_after_any_upload_order(factory, batches, data):
    seq = _new_job(factory)
    sent: list[list[tuple[int, str, float, float]]] = []
    for batch in batches:
        upload = [(step, name, value, float(step) * 0.5) for step, name, value in batch]
        if sent and data.draw(st.booleans(), label="resume"):
            # a resumed run sends again a part of what it sent before, then new points
            old = data.draw(st.sampled_from(sent), label="resent")
            upload = old[: data.draw(st.integers(0, len(old)))] + upload
        upload = data.draw(st.permutations(upload), label="order")
        sent.append(upload)
        with factory() as s:
            repo.insert_points(s, seq, upload)
            s.commit()
    if data.draw(st.booleans(), label="retry whole upload"):
        with factory() as s:  # a retried upload is all duplicates: nothing changes
            assert repo.insert_points(s, seq, data.draw(st.sampled_from(sent))) == 0
            s.commit()
    with factory() as s:
        assert_rollups_match(s, seq)


def test_a_rolled_back_upload_leaves_no_rollups(factory):
    seq = _new_job(factory)
    with factory() as s:
        repo.insert_points(s, seq, [(i, "train/loss", float(i), 0.0) for i in range(100)])
        s.rollback()
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(MetricRollupRow)) == 0
        repo.insert_points(s, seq, [(i, "train/loss", float(i), 0.0) for i in range(100)])
        s.commit()
        assert_rollups_match(s, seq)


def test_migration_0004_backfills_existing_points(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}", pool_size=2)
    upgrade(engine, "0003")
    with engine.begin() as conn:
        for seq in (1, 2):
            conn.execute(
                text(
                    "INSERT INTO jobs (seq, id, name, owner, status, spec, resources, "
                    "created_at, updated_at, cancel_requested) VALUES (:seq, :id, 'old', 'a', "
                    "'SUCCEEDED', '{}', '{}', '2026-01-01', '2026-01-01', 0)"
                ),
                {"seq": seq, "id": f"job{seq}"},
            )
            rows = [
                {"seq": seq, "step": st, "name": name, "value": v, "time": st * 0.1}
                for st in range(0, 70_000, 7)
                for name, v in (
                    ("train/loss", 1.0 / (st + 1) + seq),
                    ("val/loss", None if st % 700 == 0 else (math.inf if st % 49 == 0 else 2.0)),
                )
            ]
            conn.execute(
                text(
                    "INSERT INTO metric_points (job_seq, step, name, value, time) "
                    "VALUES (:seq, :step, :name, :value, :time)"
                ),
                rows,
            )
    upgrade(engine)
    factory = make_session_factory(engine)
    with factory() as s:
        for seq in (1, 2):
            assert_rollups_match(s, seq)
        levels = s.scalars(select(MetricRollupRow.level).distinct()).all()
        assert sorted(levels) == list(ROLLUP_LEVELS)
    engine.dispose()


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    batch=st.lists(point, min_size=1, max_size=80),
    since=st.one_of(st.none(), st.integers(-1, 2**20)),
    max_points=st.integers(2, 300),
)
def test_history_columns_equal_the_buckets_they_replace(factory, batch, since, max_points):
    # the history reads rollup rows as columns (no Bucket a row) and raw points by step
    # range: the same values, in the same order, as rolled_series and metric_points
    seq = _new_job(factory)
    with factory() as s:
        repo.insert_points(s, seq, [(step, name, v, float(step)) for step, name, v in batch])
        s.commit()
    with factory() as s:
        for info in series_info(s, seq, since):
            buckets = rolled_series(s, seq, info, max_points, since)
            cols = rolled_columns(s, seq, info, max_points, since)
            assert cols.steps == [b.last_step for b in buckets]
            assert cols.times == [b.last_time for b in buckets]
            assert cols.mins == [b.vmin for b in buckets]
            assert cols.maxs == [b.vmax for b in buckets]
            want = [repo.finite_or_none(b.mean) for b in buckets]
            assert len(cols.values) == len(want)
            assert all(_same_value(a, b) for a, b in zip(cols.values, want, strict=True))
            raw = [tuple(r[1:]) for r in repo.metric_points(s, seq, [info.name], since)]
            steps, vals, times = raw_columns(s, seq, info)
            assert steps == [r[0] for r in raw] and times == [r[2] for r in raw]
            assert all(_same_value(a, r[1]) for a, r in zip(vals, raw, strict=True))
            assert len(vals) == len(raw) == info.n


def test_level_rule():
    # the finest level whose buckets over the step span number at most max_points
    assert level_for(1, 100_000, 1000) == 7
    assert level_for(1, 5000, 100) == 6
    assert level_for(0, 15, 1) == 4
    assert level_for(1, 10**9, 1000) is None  # past 2**16: buckets are merged


def _post(svc, job_id: str, points: list[tuple[int, str, float]]) -> dict:
    body = {
        "points": [{"step": st, "name": n, "value": v, "time": float(st)} for st, n, v in points]
    }
    r = svc.client.post(
        f"/v1/jobs/{job_id}/metrics",
        content=json.dumps(body),  # NaN as the engine sends it (a JSON extension)
        headers={
            "Authorization": f"Bearer {svc.ingest_token(job_id)}",
            "Content-Type": "application/json",
        },
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_history_reads_rollups_after_since_step_and_merges_past_the_coarsest(svc):
    job = svc.client.post("/v1/jobs", json=tiny_spec(), headers=svc.alice).json()
    svc.tick()
    values = {st: math.sin(st) * 10 + st * 1e-3 for st in range(1, 6001)}
    values[3001] = math.nan  # a NaN inside a bucket: the mean is over the finite values
    pts = [(st, "train/loss", v) for st, v in values.items()]
    # out of order, in two uploads, the second resending part of the first
    assert _post(svc, job["id"], pts[3000:])["accepted"] == 3000
    assert _post(svc, job["id"], pts[:3500])["duplicates"] == 500
    url = f"/v1/jobs/{job['id']}/metrics"
    h = svc.client.get(f"{url}?since_step=1000&max_points=100", headers=svc.alice).json()
    (s,) = h["series"]
    assert s["downsampled"] and s["total_points"] == 5000
    # steps 1001..6000: (6000 >> 6) - (1001 >> 6) + 1 = 79 buckets of 64 steps
    assert len(s["steps"]) == 79 and s["steps"][0] == 1023 and s["steps"][-1] == 6000
    first = [values[st] for st in range(1001, 1024)]  # bucket 15 cut at since_step
    assert s["values"][0] == pytest.approx(sum(first) / len(first))
    assert s["mins"][0] == min(first) and s["maxs"][0] == max(first)
    nan_bucket = [values[st] for st in range(2944, 3008) if st != 3001]
    i = s["steps"].index(3007)
    assert s["values"][i] == pytest.approx(sum(nan_bucket) / len(nan_bucket))
    # fewer points asked than the coarsest level gives: coarsest buckets are merged
    assert _post(svc, job["id"], [(200_000, "train/loss", 1.0)])["accepted"] == 1
    h = svc.client.get(f"{url}?max_points=2", headers=svc.alice).json()
    (s,) = h["series"]
    assert len(s["steps"]) == 2 and s["steps"] == [6000, 200_000]
    assert s["total_points"] == 6001
    # a short series is read raw and not marked downsampled
    h = svc.client.get(f"{url}?since_step=5990", headers=svc.alice).json()
    assert h["series"][0]["steps"] == [*range(5991, 6001), 200_000]
    assert not h["downsampled"] and h["series"][0]["mins"] is None


def test_deleting_a_job_deletes_its_rollups_in_batches(svc, monkeypatch):
    monkeypatch.setattr(repo, "DELETE_BATCH", 7)
    job, other = (
        svc.client.post("/v1/jobs", json=tiny_spec(), headers=svc.alice).json() for _ in range(2)
    )
    svc.tick()
    _post(svc, job["id"], [(st, "train/loss", 1.0) for st in range(1, 300)])
    _post(svc, other["id"], [(1, "train/loss", 1.0)])
    svc.cluster.set(f"alto-{job['id']}", "SUCCEEDED")
    svc.tick()

    def count() -> int:
        with svc.app.state.svc.factory() as s:
            return s.scalar(select(func.count()).select_from(MetricRollupRow))

    assert count() > 7 + len(ROLLUP_LEVELS)
    assert svc.client.delete(f"/v1/jobs/{job['id']}", headers=svc.alice).status_code == 204
    assert count() == len(ROLLUP_LEVELS)  # the other job's one point, at every level
