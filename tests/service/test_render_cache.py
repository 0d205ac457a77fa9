"""The comparison summary and plot cache (service.render_cache): a new point or a status
change invalidates it, the plot's ETag answers 304, and an unchanged plot is drawn once."""

from __future__ import annotations

import io

import numpy as np
from alto_client.metrics import TRAIN_LOSS, VAL_LOSS
from alto_client.models import ArmSummary, JobStatus
from PIL import Image
from test_curves import _comparison, _post

import service.routers.comparisons as comparisons_router
from service.curves import Band
from service.plot import PNG_OPTIONS, comparison_figure, render_comparison
from service.render_cache import RenderCache, etag_matches


def _count_renders(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = comparisons_router.render_comparison

    def spy(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(comparisons_router, "render_comparison", spy)
    return calls


def test_plot_is_drawn_once_until_a_point_arrives_and_answers_304(svc, monkeypatch) -> None:
    comp = _comparison(svc)
    job = comp["arms"][0]["job_ids"][0]
    _post(svc, job, TRAIN_LOSS, [1, 2, 3], [5.0, 4.0, 3.0])
    renders = _count_renders(monkeypatch)
    url = f"/v1/comparisons/{comp['id']}/plot.png"

    first = svc.client.get(url, headers=svc.alice)
    assert first.status_code == 200 and first.content[:4] == b"\x89PNG"
    etag = first.headers["etag"]
    assert etag.startswith('"') and "no-cache" in first.headers["cache-control"]
    again = svc.client.get(url, headers=svc.alice)
    assert again.content == first.content and again.headers["etag"] == etag
    assert len(renders) == 1  # the second answer came from the cache

    # the browser revalidates: same data, 304 without a body
    cached = svc.client.get(url, headers={**svc.alice, "If-None-Match": etag})
    assert cached.status_code == 304 and cached.content == b""
    assert cached.headers["etag"] == etag and len(renders) == 1

    # a new point (even in a bucket that already has points) is a new version
    _post(svc, job, TRAIN_LOSS, [4], [2.5])
    fresh = svc.client.get(url, headers={**svc.alice, "If-None-Match": etag})
    assert fresh.status_code == 200 and fresh.headers["etag"] != etag
    assert len(renders) == 2

    # a re-posted point changes nothing: still the same version
    _post(svc, job, TRAIN_LOSS, [4], [2.5])
    same = svc.client.get(url, headers={**svc.alice, "If-None-Match": fresh.headers["etag"]})
    assert same.status_code == 304 and len(renders) == 2


def test_summary_cache_follows_points_and_statuses(svc) -> None:
    comp = _comparison(svc)
    url = f"/v1/comparisons/{comp['id']}"
    jobs = [j for arm in comp["arms"] for j in arm["job_ids"]]
    before = svc.client.get(url, headers=svc.alice).json()
    assert all(a["final_val_loss_mean"] is None for a in before["arms"])
    for job in jobs:
        _post(svc, job, VAL_LOSS, [4], [3.0])
    after = svc.client.get(url, headers=svc.alice).json()
    assert all(a["final_val_loss_mean"] == 3.0 for a in after["arms"])
    # a status change alone (no new points) is seen too
    r = svc.client.post(f"/v1/jobs/{jobs[0]}/cancel", headers=svc.alice)
    assert r.status_code in (200, 202), r.text
    svc.tick()
    status = svc.client.get(f"/v1/jobs/{jobs[0]}", headers=svc.alice).json()["status"]
    got = svc.client.get(url, headers=svc.alice).json()
    assert got["arms"][0]["status"] == status


def test_etag_matching_and_lru_bound() -> None:
    assert etag_matches('"a", W/"b"', '"b"') and etag_matches("*", '"x"')
    assert not etag_matches(None, '"a"') and not etag_matches('"a"', '"b"')
    cache = RenderCache(max_entries=2)
    made: list[str] = []

    def make(v: str):
        return lambda: made.append(v) or v

    assert cache.get_or_compute(("a",), make("a")) == "a"
    assert cache.get_or_compute(("b",), make("b")) == "b"
    assert cache.get_or_compute(("a",), make("a2")) == "a"  # hit, and now the newest
    cache.get_or_compute(("c",), make("c"))  # evicts b, the least recently used
    assert cache.get_or_compute(("b",), make("b2")) == "b2"
    assert made == ["a", "b", "c", "b2"]


def _fresh_png(*args) -> bytes:
    buf = io.BytesIO()
    comparison_figure(*args).savefig(buf, format="png", pil_kwargs=PNG_OPTIONS)
    return buf.getvalue()


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def test_a_reused_figure_draws_the_same_pixels_as_a_fresh_one() -> None:
    steps = np.arange(1, 301, dtype=np.int64)
    mean = 5.0 / np.sqrt(steps)
    band = Band(steps, mean, mean - 0.1, mean + 0.1, np.ones_like(steps), 2, 300, False)
    short = Band(
        steps[:40], mean[:40] + 1, mean[:40], mean[:40] + 2, steps[:40] * 0 + 1, 1, 40, False
    )

    def summaries(pcts: dict[str, float | None]) -> list[ArmSummary]:
        return [
            ArmSummary(
                name=n, status=JobStatus.SUCCEEDED, job_ids=[], seeds=[], peak_memory_overhead_pct=p
            )
            for n, p in pcts.items()
        ]

    cases = [
        (
            "a",
            {"alto": {TRAIN_LOSS: band, VAL_LOSS: short}, "adamw": {TRAIN_LOSS: short}},
            summaries({"alto": 20.0, "adamw": None}),
            "adamw",
        ),
        ("b", {"x": {}, "y": {}}, summaries({"x": None, "y": None}), "x"),  # no points yet
        (
            "c",
            {"p": {VAL_LOSS: band}, "q": {}, "r": {VAL_LOSS: short}},
            summaries({"p": None, "q": -5.0, "r": 3.0}),
            "p",
        ),
    ]
    for args in cases + cases[:1]:  # every case on figures that drew another one before
        assert np.array_equal(_pixels(render_comparison(*args)), _pixels(_fresh_png(*args)))


def test_study_plot_has_an_etag_and_follows_its_jobs(svc) -> None:
    from test_study_api import create

    study = create(svc)
    url = f"/v1/studies/{study['id']}/plot.png"
    first = svc.client.get(url, headers=svc.alice)
    assert first.status_code == 200 and first.content[:4] == b"\x89PNG"
    etag = first.headers["etag"]
    again = svc.client.get(url, headers={**svc.alice, "If-None-Match": etag})
    assert again.status_code == 304
    svc.tick()  # the study launches its trials: new jobs, a new version
    moved = svc.client.get(url, headers={**svc.alice, "If-None-Match": etag})
    assert moved.status_code == 200 and moved.headers["etag"] != etag


def test_summary_medians_match_statistics_median_with_ties_and_non_finite(svc) -> None:
    """The summary's throughput median (an index-only walk, then one point per middle
    value: service.repo._median_sql) equals statistics.median of the finite values."""
    import statistics

    from alto_client.metrics import TRAIN_TOKENS_PER_S

    from service.db.tables import JobRow
    from service.repo import compared_points, insert_points

    comp = _comparison(svc)
    cases = {
        "odd": [5.0, 1.0, 3.0, 2.0, 4.0],
        "even, distinct middles": [4.0, 1.0, 3.0, 2.0],
        "even, tied middles": [2.0, 1.0, 2.0, 9.0, 2.0, 2.0],
        "with non-finite": [float("nan"), 3.0, float("inf"), 1.0, float("-inf"), 2.0],
    }
    job_ids = [j for arm in comp["arms"] for j in arm["job_ids"]]
    assert len(job_ids) == len(cases)
    factory = svc.app.state.svc.factory
    with factory() as s:
        seqs = {s.query(JobRow.seq).filter(JobRow.id == j).scalar(): j for j in job_ids}
        for seq, values in zip(seqs, cases.values()):  # stored as the ingest endpoint does
            points = [(i + 1, TRAIN_TOKENS_PER_S, v, 100.0 + i) for i, v in enumerate(values)]
            insert_points(s, seq, points)
        s.commit()
        points = compared_points(
            s, list(seqs), curves=(), first=(), last=(), medians=(TRAIN_TOKENS_PER_S,), peaks=()
        )
    for seq, job_id in seqs.items():
        values = cases[list(cases)[job_ids.index(job_id)]]
        finite = [v for v in values if np.isfinite(v)]
        got = sorted({(p[2], p[3]) for p in points if p[0] == seq})  # (step, value), as _runs
        assert statistics.median(v for _, v in got) == statistics.median(finite), job_id
