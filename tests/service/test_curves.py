"""Seed bands (service.curves): known answers, properties, one set of numbers for the
PNG and the dashboard's endpoint, and `GET /v1/comparisons/{id}/curves`."""

from __future__ import annotations

import math

import numpy as np
import pytest
from alto_client.metrics import TRAIN_LOSS, VAL_LOSS
from alto_client.models import ArmSummary, ComparisonCurves, JobStatus
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.collections import PolyCollection

import service.routers.comparisons as comparisons_router
from service.compare import RunData, Series
from service.curves import DEFAULT_MAX_POINTS, arm_bands, comparison_curves, seed_band
from service.plot import comparison_figure

NAN = float("nan")


def run(job_id: str, seed: int, **series: tuple[list[int], list[float]]) -> RunData:
    names = {"train": TRAIN_LOSS, "val": VAL_LOSS}
    return RunData(
        job_id=job_id,
        seed=seed,
        status=JobStatus.SUCCEEDED,
        series={names[k]: Series(steps=list(s), values=list(v)) for k, (s, v) in series.items()},
    )


# ------------------------------------------------------------------ known answers


def test_two_seeds_on_the_same_steps_give_mean_and_sample_std() -> None:
    band = seed_band([Series([1, 2, 3], [4.0, 3.0, 2.0]), Series([1, 2, 3], [4.2, 3.4, 2.2])])
    assert band is not None
    assert band.steps.tolist() == [1, 2, 3]
    assert band.mean == pytest.approx([4.1, 3.2, 2.1], abs=1e-12)
    std = [math.sqrt(0.02), math.sqrt(0.08), math.sqrt(0.02)]  # sample std of two values
    assert band.upper - band.mean == pytest.approx(std, abs=1e-12)
    assert band.mean - band.lower == pytest.approx(std, abs=1e-12)
    assert band.n.tolist() == [2, 2, 2] and band.n_seeds == 2
    assert band.total_points == 3 and not band.downsampled


def test_a_missing_step_is_interpolated_inside_the_seeds_range_only() -> None:
    # seed b skipped step 2 (interpolated: 3 + (5 - 3) / 3) and has not reached step 5
    band = seed_band([Series([1, 2, 3, 5], [1.0, 2.0, 3.0, 9.0]), Series([1, 4], [3.0, 5.0])])
    assert band is not None
    assert band.steps.tolist() == [1, 2, 3, 4, 5]
    b_at_2, b_at_3 = 3.0 + 2.0 / 3.0, 3.0 + 4.0 / 3.0
    a_at_4 = 3.0 + (9.0 - 3.0) / 2.0
    assert band.mean == pytest.approx(
        [2.0, (2.0 + b_at_2) / 2, (3.0 + b_at_3) / 2, (a_at_4 + 5.0) / 2, 9.0], abs=1e-12
    )
    assert band.n.tolist() == [2, 2, 2, 2, 1]
    assert band.lower[-1] == band.upper[-1] == 9.0  # one seed: no spread


def test_non_finite_values_contribute_nothing() -> None:
    diverged = Series([1, 2, 3], [2.0, NAN, math.inf])
    band = seed_band([Series([1, 2, 3], [1.0, 1.0, 1.0]), diverged, Series([], [])])
    assert band is not None
    assert band.n_seeds == 2  # the empty series is no seed
    assert band.n.tolist() == [2, 1, 1]
    assert band.mean.tolist() == [1.5, 1.0, 1.0]
    assert seed_band([Series([1], [NAN]), Series([], [])]) is None
    assert seed_band([]) is None


def test_values_stored_as_none_count_as_missing() -> None:
    band = seed_band([Series([1, 2], [None, 2.0])])  # type: ignore[list-item]
    assert band is not None and band.steps.tolist() == [2]


def test_long_curves_are_downsampled_keeping_both_ends() -> None:
    steps = list(range(1, 5001))
    a = Series(steps, [10.0 / s for s in steps])
    b = Series(steps, [11.0 / s for s in steps])
    full = seed_band([a, b], max_points=None)
    band = seed_band([a, b], max_points=100)
    assert full is not None and band is not None
    assert full.total_points == band.total_points == 5000 and not full.downsampled
    assert band.downsampled and len(band.steps) <= 100
    assert band.steps[0] == 1 and band.steps[-1] == 5000
    at = {int(s): i for i, s in enumerate(full.steps)}
    for i, s in enumerate(band.steps):  # the kept steps carry the full band's numbers
        assert band.mean[i] == full.mean[at[int(s)]]
        assert band.lower[i] == full.lower[at[int(s)]]
        assert band.upper[i] == full.upper[at[int(s)]]


def test_arm_bands_leave_out_metrics_no_seed_reported() -> None:
    arms = {
        "alto": [run("a1", 1, train=([1, 2], [3.0, 2.0])), run("a2", 2)],
        "adamw": [run("b1", 1)],
    }
    bands = arm_bands(arms)
    assert list(bands) == ["alto", "adamw"]
    assert list(bands["alto"]) == [TRAIN_LOSS] and bands["adamw"] == {}
    answer = comparison_curves("c1", "adamw", arms, bands)
    assert [a.name for a in answer.arms] == ["alto", "adamw"]
    assert answer.arms[0].job_ids == ["a1", "a2"]
    assert answer.arms[0].curves[0].n_seeds == 1 and answer.arms[1].curves == []


# ------------------------------------------------------------------ properties

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
maybe = st.one_of(finite, finite, finite, st.just(NAN), st.just(math.inf))


@st.composite
def seed_series(draw: st.DrawFn) -> list[Series]:
    out = []
    for _ in range(draw(st.integers(1, 5))):
        steps = sorted(draw(st.sets(st.integers(0, 60), min_size=0, max_size=25)))
        out.append(Series(steps, [draw(maybe) for _ in steps]))
    return out


@settings(max_examples=150, deadline=None)
@given(seed_series())
def test_the_mean_lies_in_its_band_and_between_the_seeds(series: list[Series]) -> None:
    band = seed_band(series, max_points=None)
    finite_steps = {s for x in series for s, v in zip(x.steps, x.values) if math.isfinite(v)}
    if not finite_steps:
        assert band is None
        return
    assert band is not None
    assert band.steps.tolist() == sorted(finite_steps)
    assert np.all(band.lower <= band.mean) and np.all(band.mean <= band.upper)
    assert np.all(band.n >= 1) and np.all(band.n <= band.n_seeds)
    # the mean of interpolated seed values stays within the seeds' extremes
    lo = min(v for x in series for v in x.values if math.isfinite(v))
    hi = max(v for x in series for v in x.values if math.isfinite(v))
    tol = 1e-9 * max(1.0, abs(lo), abs(hi))
    assert np.all(band.mean >= lo - tol) and np.all(band.mean <= hi + tol)


@settings(max_examples=100, deadline=None)
@given(
    steps=st.lists(st.integers(0, 10_000), min_size=1, max_size=40, unique=True),
    data=st.data(),
    copies=st.integers(1, 6),
)
def test_identical_seeds_collapse_the_band(steps: list[int], data: st.DataObject, copies: int):
    steps.sort()
    values = data.draw(st.lists(finite, min_size=len(steps), max_size=len(steps)))
    band = seed_band([Series(steps, values) for _ in range(copies)], max_points=None)
    assert band is not None
    assert band.n_seeds == copies and band.n.tolist() == [copies] * len(steps)
    scale = np.maximum(1.0, np.abs(values))
    assert np.all(np.abs(band.mean - values) <= 1e-12 * scale)
    assert np.all(band.upper - band.lower <= 1e-9 * scale)


# ------------------------------------------------------------------ PNG == endpoint


def _png_arrays(fig, title: str) -> dict[str, dict[str, list[float]]]:
    """What the PNG's loss panel titled `title` draws per arm: the mean line and the band."""
    ax = next(a for a in fig.axes if a.get_title().startswith(title))
    lines = {ln.get_label().split(" (")[0]: ln for ln in ax.get_lines()}
    fills = [c for c in ax.collections if isinstance(c, PolyCollection)]
    out = {}
    for (arm, ln), fill in zip(lines.items(), fills):
        x, y = ln.get_data()
        out[arm] = {"steps": list(map(float, x)), "mean": list(map(float, y)), "fill": fill}
    return out


def test_the_png_draws_the_endpoints_numbers() -> None:
    arms = {
        "alto": [
            run("a1", 1, train=([1, 2, 3, 4], [5.0, 4.0, 3.5, 3.0]), val=([2, 4], [4.1, 3.2])),
            run("a2", 2, train=([1, 2, 3], [5.2, 4.4, 3.3]), val=([2, 4], [4.3, 3.0])),
        ],
        "adamw": [run("b1", 1, train=([1, 2, 3, 4], [5.0, 4.5, 4.0, 3.9]), val=([4], [3.9]))],
    }
    bands = arm_bands(arms)
    answer = comparison_curves("c1", "adamw", arms, bands)
    summaries = [ArmSummary(name=n, status=JobStatus.SUCCEEDED, job_ids=[], seeds=[]) for n in arms]
    fig = comparison_figure("t", bands, summaries, "adamw")
    for metric, title in ((TRAIN_LOSS, "training loss"), (VAL_LOSS, "validation loss")):
        drawn = _png_arrays(fig, title)
        assert list(drawn) == ["alto", "adamw"]
        for arm in answer.arms:
            curve = next(c for c in arm.curves if c.metric == metric)
            got = drawn[arm.name]
            assert got["steps"] == curve.steps and got["mean"] == curve.mean
            verts = {tuple(map(float, v)) for p in got["fill"].get_paths() for v in p.vertices}
            band = {(float(s), y) for s, y in zip(curve.steps, curve.lower)}
            band |= {(float(s), y) for s, y in zip(curve.steps, curve.upper)}
            assert verts == band, (metric, arm.name)


# ------------------------------------------------------------------ the route


def _post(svc, job_id: str, name: str, steps: list[int], values: list[float]) -> None:
    token = svc.cluster.jobs[f"alto-{job_id}"].spec["report"]["token"]
    points = [
        {"step": s, "name": name, "value": v, "time": 100.0 + s} for s, v in zip(steps, values)
    ]
    r = svc.client.post(
        f"/v1/jobs/{job_id}/metrics",
        json={"points": points},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200, r.text


def _comparison(svc):
    from svc_fakes import tiny_spec

    body = {
        "spec": tiny_spec(),
        "arms": [
            {"name": "alto", "optimizer": {"name": "alto"}},
            {"name": "adamw", "optimizer": {"name": "adamw"}},
        ],
        "seeds": [1, 2],
        "baseline": "adamw",
    }
    svc.cluster.nodes = [{"CPU": 8.0}]  # all four jobs run at once
    r = svc.client.post("/v1/comparisons", json=body, headers=svc.alice)
    assert r.status_code == 202, r.text
    svc.tick()
    return r.json()


def test_curves_route_answers_the_bands_and_the_png_draws_them(svc, monkeypatch) -> None:
    comp = _comparison(svc)
    data: dict[str, dict[int, dict[str, tuple[list[int], list[float]]]]] = {
        "alto": {
            1: {TRAIN_LOSS: (list(range(1, 13)), [5.0 - 0.2 * i for i in range(12)])},
            2: {TRAIN_LOSS: (list(range(1, 9)), [5.1 - 0.25 * i for i in range(8)])},
        },
        "adamw": {
            1: {TRAIN_LOSS: (list(range(1, 13)), [5.0 - 0.1 * i for i in range(12)])},
            2: {TRAIN_LOSS: (list(range(1, 13)), [5.0 - 0.1 * i for i in range(12)])},
        },
    }
    for arm in comp["arms"]:
        for seed, job_id in zip(arm["seeds"], arm["job_ids"]):
            val = ([4, 8], [4.0 + 0.1 * seed, 3.5 - 0.1 * seed])
            data[arm["name"]][seed][VAL_LOSS] = val
            for name, (steps, values) in data[arm["name"]][seed].items():
                _post(svc, job_id, name, steps, values)

    r = svc.client.get(f"/v1/comparisons/{comp['id']}/curves", headers=svc.alice)
    assert r.status_code == 200, r.text
    got = ComparisonCurves.model_validate(r.json())
    assert got.comparison_id == comp["id"] and got.baseline == "adamw"
    assert [a.name for a in got.arms] == ["alto", "adamw"]
    for arm, listed in zip(got.arms, comp["arms"]):
        assert arm.job_ids == listed["job_ids"]
        assert [c.metric for c in arm.curves] == [TRAIN_LOSS, VAL_LOSS]
        for curve in arm.curves:
            seeds = data[arm.name]
            expected = seed_band([Series(*seeds[s][curve.metric]) for s in (1, 2)])
            assert expected is not None
            assert curve.steps == expected.steps.tolist()
            assert curve.mean == expected.mean.tolist()
            assert curve.lower == expected.lower.tolist()
            assert curve.upper == expected.upper.tolist()
            assert curve.n == expected.n.tolist() and curve.n_seeds == 2
            assert len(curve.steps) == len(curve.mean) == len(curve.lower) == len(curve.upper)
    alto_train = got.arms[0].curves[0]
    assert alto_train.n == [2] * 8 + [1] * 4  # seed 2 stopped at step 8
    adamw_train = got.arms[1].curves[0]
    assert adamw_train.lower == adamw_train.upper == adamw_train.mean  # identical seeds

    # plot.png draws exactly these arrays
    seen = []
    real = comparisons_router.render_comparison

    def spy(title, bands, summaries, baseline):
        seen.append(bands)
        return real(title, bands, summaries, baseline)

    monkeypatch.setattr(comparisons_router, "render_comparison", spy)
    png = svc.client.get(f"/v1/comparisons/{comp['id']}/plot.png", headers=svc.alice)
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    (bands,) = seen
    for arm in got.arms:
        for curve in arm.curves:
            band = bands[arm.name][curve.metric]
            assert band.steps.tolist() == curve.steps and band.mean.tolist() == curve.mean
            assert band.lower.tolist() == curve.lower and band.upper.tolist() == curve.upper

    # max_points downsamples; bounds are checked
    small = svc.client.get(
        f"/v1/comparisons/{comp['id']}/curves?max_points=4", headers=svc.alice
    ).json()
    train = small["arms"][0]["curves"][0]
    assert train["downsampled"] is True and len(train["steps"]) <= 4
    assert train["total_points"] == 12 and train["steps"][0] == 1 and train["steps"][-1] == 12
    for bad in ("1", "100001", "x"):
        r = svc.client.get(
            f"/v1/comparisons/{comp['id']}/curves?max_points={bad}", headers=svc.alice
        )
        assert r.status_code == 422, (bad, r.text)
        assert "max_points" in r.text
    assert DEFAULT_MAX_POINTS == 1000


def test_curves_route_auth_visibility_and_unknown_ids(svc) -> None:
    comp = _comparison(svc)
    path = f"/v1/comparisons/{comp['id']}/curves"
    # no seed reported yet: every arm, no curves
    r = svc.client.get(path, headers=svc.alice)
    assert r.status_code == 200
    assert [(a["name"], a["curves"]) for a in r.json()["arms"]] == [("alto", []), ("adamw", [])]
    assert svc.client.get(path).status_code == 401
    assert svc.client.get(path, headers={"Authorization": "Bearer alto_nope"}).status_code == 401
    other = svc.client.get(path, headers=svc.bob)  # someone else's: not found, not forbidden
    assert other.status_code == 404 and comp["id"] in other.json()["message"]
    assert svc.client.get(path, headers=svc.admin).status_code == 200
    missing = svc.client.get("/v1/comparisons/0123456789abcdef/curves", headers=svc.alice)
    assert missing.status_code == 404 and "0123456789abcdef" in missing.json()["message"]
    assert svc.client.get("/v1/comparisons/a%20b/curves", headers=svc.alice).status_code in (
        404,
        422,
    )
