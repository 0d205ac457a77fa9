"""Unit tests of the service's pure parts: downsampling, summaries, migrations, settings."""

from __future__ import annotations

import math

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alto_client.models import JobStatus
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect

from service.compare import RunData, Series, combined_status, summarize
from service.db.migrate import alembic_config, upgrade
from service.db.session import make_engine
from service.db.tables import Base
from service.downsample import keep_indices
from service.server import resolve_ray_address
from service.settings import Settings

values_st = st.lists(
    st.one_of(st.floats(allow_nan=True, allow_infinity=False, width=32), st.none()),
    min_size=0,
    max_size=400,
)


@settings(max_examples=150, deadline=None)
@given(values=values_st, max_points=st.integers(min_value=2, max_value=120))
def test_downsampling_keeps_ends_and_extremes(values, max_points):
    keep = keep_indices(values, max_points)
    n = len(values)
    assert keep == sorted(set(keep))
    assert len(keep) <= max(max_points, 0) or n <= max_points
    if n <= max_points:
        assert keep == list(range(n))
        return
    assert keep[0] == 0 and keep[-1] == n - 1
    finite = [(v, i) for i, v in enumerate(values) if v is not None and not math.isnan(v)]
    if finite and max_points >= 4:
        lo = min(v for v, _ in finite)
        hi = max(v for v, _ in finite)
        kept = [values[i] for i in keep]
        assert lo in kept and hi in kept


def test_downsampling_rejects_tiny_limits():
    with pytest.raises(ValueError, match="max_points"):
        keep_indices([1.0, 2.0, 3.0], 1)


def _run(job, seed, val, status=JobStatus.SUCCEEDED, mem=None, state=None, tps=None):
    series = {
        "val/loss": Series(
            steps=[10 * (i + 1) for i in range(len(val))],
            values=list(val),
            times=[5.0 * (i + 1) for i in range(len(val))],
        ),
        "train/loss": Series(steps=[1], values=[9.0], times=[0.0]),
    }
    if mem is not None:
        series["mem/peak_allocated_bytes"] = Series([1, 2], [mem / 2, mem], [0.0, 1.0])
        series["mem/peak_rss_bytes"] = Series([1], [mem * 100], [0.0])  # ignored: GPU wins
    if state is not None:
        series["optim/state_bytes"] = Series([1], [state], [0.0])
    if tps is not None:
        series["train/tokens_per_s"] = Series([1, 2, 3], [1.0, tps, tps], [0.0, 1.0, 2.0])
    return RunData(job_id=job, seed=seed, status=status, series=series)


def test_summary_not_reached_and_missing_data():
    arms = {
        "base": [_run("b1", 0, [3.0, 2.0], mem=100.0, state=8.0, tps=10.0)],
        "slow": [_run("s1", 0, [3.5, 2.5], mem=150.0, state=12.0, tps=5.0)],
        "empty": [RunData(job_id="e1", seed=0, status=JobStatus.QUEUED)],
    }
    out = {a.name: a for a in summarize(arms, "base")}
    assert out["slow"].reached_baseline is False
    assert out["slow"].steps_to_baseline is None
    assert out["slow"].val_loss_delta_vs_baseline == pytest.approx(0.5)
    assert out["slow"].peak_memory_overhead_pct == pytest.approx(50.0)
    assert out["slow"].optimizer_state_bytes_ratio == pytest.approx(1.5)
    assert out["slow"].tokens_per_s_ratio == pytest.approx(0.5)
    assert out["base"].reached_baseline is True and out["base"].steps_to_baseline == 20
    assert out["base"].step_speedup_vs_baseline == 1.0
    assert out["empty"].final_val_loss_mean is None and out["empty"].reached_baseline is None
    assert out["empty"].status == JobStatus.QUEUED


def test_summary_ignores_non_finite_losses():
    arms = {
        "base": [_run("b", 0, [3.0, 2.0])],
        "div": [_run("d", 0, [2.5, float("nan")])],
    }
    out = {a.name: a for a in summarize(arms, "base")}
    assert out["div"].final_val_loss_mean == 2.5
    assert out["div"].reached_baseline is False


def test_combined_status_takes_the_worst():
    S = JobStatus
    assert combined_status([S.SUCCEEDED, S.RUNNING]) == S.RUNNING
    assert combined_status([S.SUCCEEDED, S.FAILED, S.RUNNING]) == S.FAILED
    assert combined_status([S.SUCCEEDED, S.SUCCEEDED]) == S.SUCCEEDED
    assert combined_status([]) == S.PENDING


def test_migrations_match_the_models_and_go_both_ways(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], diff
    from alembic import command

    command.downgrade(alembic_config(engine), "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(engine)
    assert {"jobs", "metric_points", "api_tokens", "comparisons", "job_tags"} <= set(
        inspect(engine).get_table_names()
    )
    engine.dispose()


def test_sqlite_runs_in_wal_mode(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'w.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


def test_settings_and_ray_address(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    s = Settings(data_dir=tmp_path)
    assert s.resolved_database_url() == f"sqlite:///{(tmp_path / 'alto.db').resolve()}"
    assert resolve_ray_address(s) is None
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265/")
    assert resolve_ray_address(s) == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    with pytest.raises(ValueError, match="dashboard URL"):
        resolve_ray_address(s)
    monkeypatch.setenv("ALTO_SCHEDULER_INTERVAL_S", "0")
    with pytest.raises(ValueError, match="scheduler_interval_s"):
        Settings()
