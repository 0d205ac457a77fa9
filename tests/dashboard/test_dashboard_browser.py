"""The dashboard in headless Chromium: a finished comparison's and a finished study's
numbers match the API, the charts (plotly.js, served by the service) draw the API's
numbers, zoom, show values on hover and switch the loss axis to a log scale.

Uses Debian's chromium (/usr/bin/chromium) driven by Playwright; no browser is
downloaded. Screenshots go to $ALTO_TEST_ARTIFACTS (default: the test's tmp dir).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alto_client.client import Client
from alto_client.metrics import TRAIN_LOSS, VAL_LOSS
from alto_client.models import Comparison
from alto_client.study import Study
from livesvc import TINY_SPEC, LiveService

pytestmark = pytest.mark.timeout(180)

CHROMIUM = os.environ.get("ALTO_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = sync_api.expect
if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, svc: LiveService):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    p.goto(f"{svc.url}/#token={svc.admin_token}")  # stores the token for this context
    p.wait_for_selector("body[data-ready=yes]", timeout=30_000)
    yield p
    context.close()
    assert errors == [], errors


@pytest.fixture(scope="module")
def finished(svc: LiveService) -> Comparison:
    spec = {**TINY_SPEC, "tags": ["dash", uuid.uuid4().hex[:8]]}
    with Client(svc.url, svc.admin_token) as client:
        comp = client.compare(spec, ["alto", "adamw"], seeds=2, name="dashboard-check")
        return client.wait_comparison(comp.id, timeout=90, poll_interval=0.2)


@pytest.fixture(scope="module")
def study(svc: LiveService) -> Study:
    """A finished study on the simulated cluster: one batch size, 2 trials and 2 seeds
    per arm (12 jobs of 12 steps). The simulated loss does not depend on the learning
    rate: alto's curve is lower than adamw's ("better"), and a second adamw arm ties
    with the baseline ("inside the noise")."""
    request = {
        "name": "dashboard-study <i>not markup</i>",
        "spec": {**TINY_SPEC, "tags": ["dash-study", uuid.uuid4().hex[:8]]},
        "arms": [
            {
                "name": "alto",
                "optimizer": {"name": "alto"},
                "search": {"lr": {"low": 1e-3, "high": 1e-2}},
            },
            {
                "name": "adamw",
                "optimizer": {"name": "adamw"},
                "search": {"lr": {"low": 1e-4, "high": 1e-2}},
            },
            {
                "name": "adamw-wd",
                "optimizer": {"name": "adamw"},
                "search": {
                    "lr": {"low": 1e-4, "high": 1e-2},
                    "weight_decay": {"low": 0.01, "high": 0.2},
                },
            },
        ],
        "batch_sizes": [8],
        "budget": {"steps": 12},
        "tuning": {"trials": 2},
        "seeds": [0, 1],
        "baseline": "adamw",
        "evals_per_run": 3,
    }
    with Client(svc.url, svc.admin_token) as client:
        st = client.submit_study(request)
        return client.wait_study(st.id, timeout=90, poll_interval=0.2)


def _artifacts(tmp_path: Path) -> Path:
    out = Path(os.environ.get("ALTO_TEST_ARTIFACTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_comparison_page_shows_the_apis_numbers(
    page, svc: LiveService, finished: Comparison, tmp_path: Path
) -> None:
    assert finished.status.value == "SUCCEEDED"
    page.goto(f"{svc.url}/comparisons/{finished.id}")
    page.wait_for_selector("body[data-ready=yes]", timeout=30_000)
    assert page.title().startswith("dashboard-check")
    fields = (
        "final_val_loss_mean",
        "best_val_loss_mean",
        "val_loss_delta_vs_baseline",
        "steps_to_baseline",
        "tokens_per_s_mean",
        "peak_memory_overhead_pct",
        "optimizer_state_bytes_ratio",
    )
    for arm in finished.arms:
        row = page.locator(f'#summary tr[data-arm="{arm.name}"]')
        assert row.count() == 1
        assert row.locator("[data-status]").inner_text() == arm.status.value
        for field in fields:
            raw = row.locator(f'[data-field="{field}"]').get_attribute("data-value")
            expected = getattr(arm, field)
            if field == "val_loss_delta_vs_baseline" and arm.name == finished.baseline:
                expected = None
            if expected is None:
                assert raw == "", (arm.name, field, raw)
            else:
                assert float(raw) == pytest.approx(expected, rel=1e-12), (arm.name, field)
        shown = row.locator('[data-field="final_val_loss_mean"]').inner_text()
        assert shown.startswith(f"{arm.final_val_loss_mean:.4g}")
    alto = page.locator('#summary tr[data-arm="alto"]')
    assert "steps (" in alto.locator('[data-field="steps_to_baseline"]').inner_text()
    # the loss charts draw the server's seed bands exactly: a mean and a band per arm
    with Client(svc.url, svc.admin_token) as client:
        curves = client.comparison_curves(finished.id)
    for chart, metric in (("chart-val", VAL_LOSS), ("chart-train", TRAIN_LOSS)):
        expect(page.locator(f"#{chart}")).to_have_attribute("data-state", "yes", timeout=20_000)
        traces = {
            (t["meta"]["arm"], t["meta"]["role"]): t
            for t in _traces(page, chart)
            if t["meta"]["metric"] == metric
        }
        assert len(traces) == 3 * len(finished.arms), sorted(traces)
        for arm in curves.arms:
            curve = next(c for c in arm.curves if c.metric == metric)
            assert curve.n_seeds == 2
            for role in ("mean", "lower", "upper"):
                trace = traces[(arm.name, role)]
                assert trace["x"] == curve.steps, (chart, arm.name, role)
                assert trace["y"] == getattr(curve, role), (chart, arm.name, role)
        # a drawn mean line and a filled band per arm
        assert page.locator(f"#{chart} .scatterlayer .trace").count() == 3 * len(finished.arms)
        assert page.locator(f"#{chart} .scatterlayer path.js-fill").count() >= len(finished.arms)
    bars = _traces(page, "chart-state")
    assert len(bars) == 1 and bars[0]["meta"]["labels"] == [a.name for a in finished.arms]
    assert bars[0]["x"] == [a.optimizer_state_bytes_ratio for a in finished.arms]
    assert page.locator("#chart-state .barlayer .point").count() == len(finished.arms)
    shot = _artifacts(tmp_path) / "dashboard-comparison.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def _traces(page, chart_id: str) -> list[dict]:
    """The data of a plotly chart as the page holds it (the div's `data`)."""
    return page.evaluate(
        """id => document.getElementById(id).data.map(
            (t) => ({meta: t.meta, x: Array.from(t.x), y: Array.from(t.y)}))""",
        chart_id,
    )


def _layout(page, chart_id: str, path: str):
    return page.evaluate(
        "([id, path]) => path.split('.').reduce((o, k) => o[k], document.getElementById(id))",
        [chart_id, path],
    )


def test_comparison_charts_zoom_hover_and_log_scale(
    page, svc: LiveService, finished: Comparison, tmp_path: Path
) -> None:
    page.goto(f"{svc.url}/comparisons/{finished.id}")
    page.wait_for_selector("body[data-ready=yes]", timeout=30_000)
    chart = page.locator("#chart-train")
    expect(chart).to_have_attribute("data-state", "yes", timeout=20_000)
    expect(chart).to_have_attribute("data-yaxis", "linear")
    assert _layout(page, "chart-train", "_fullLayout.yaxis.type") == "linear"
    with Client(svc.url, svc.admin_token) as client:
        curves = client.comparison_curves(finished.id)
    train = {arm.name: c for arm in curves.arms for c in arm.curves if c.metric == TRAIN_LOSS}
    # hover: the unified hover label shows the curves' values at the step under the mouse
    drag = page.locator("#chart-train .nsewdrag")
    drag.scroll_into_view_if_needed()
    box = drag.bounding_box()
    assert box is not None
    for dx in (0.5, 0.52):  # plotly shows the label on a move inside the plot
        page.mouse.move(box["x"] + box["width"] * dx, box["y"] + box["height"] * 0.5, steps=4)
        page.wait_for_timeout(200)
    label = page.locator("#chart-train .hoverlayer .legendtext")
    expect(label).to_have_count(len(train), timeout=5_000)
    step = int(page.locator("#chart-train .hoverlayer .legendtitletext").text_content() or "")
    for arm, text in zip(train, label.all_text_contents()):
        i = train[arm].steps.index(step)
        assert text.startswith(arm), text
        shown = [float(x) for x in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", text)]
        want = [train[arm].mean[i], train[arm].lower[i], train[arm].upper[i]]
        assert shown == pytest.approx(want, rel=1e-3), (text, want)
    # zoom: a drag over the plot narrows the x axis
    full = _layout(page, "chart-train", "_fullLayout.xaxis.range")
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.5, steps=8)
    page.mouse.up()
    expect(chart).to_have_attribute("data-zoomed", "yes", timeout=5_000)
    zoomed = _layout(page, "chart-train", "_fullLayout.xaxis.range")
    assert full[0] < zoomed[0] < zoomed[1] < full[1], (full, zoomed)
    # log scale: both loss charts switch, and the choice outlives a reload
    page.check("#log-loss")
    for chart_id in ("chart-train", "chart-val"):
        expect(page.locator(f"#{chart_id}")).to_have_attribute("data-yaxis", "log")
        assert _layout(page, chart_id, "_fullLayout.yaxis.type") == "log"
    low, high = _layout(page, "chart-train", "_fullLayout.yaxis.range")
    lows = [v for arm in curves.arms for c in arm.curves if c.metric == TRAIN_LOSS for v in c.lower]
    assert low < math.log10(min(lows)) < high  # log-axis units
    page.screenshot(path=str(_artifacts(tmp_path) / "dashboard-comparison-log.png"))
    page.reload()
    page.wait_for_selector("body[data-ready=yes]", timeout=30_000)
    expect(page.locator("#chart-val")).to_have_attribute("data-yaxis", "log", timeout=20_000)
    assert page.locator("#log-loss").is_checked()
    page.uncheck("#log-loss")
    expect(page.locator("#chart-val")).to_have_attribute("data-yaxis", "linear")


def test_comparisons_page_lists_what_the_api_lists(
    page, svc: LiveService, finished: Comparison
) -> None:
    with Client(svc.url, svc.admin_token) as client:
        listed = client.comparisons_page(limit=100).items
    page.goto(f"{svc.url}/comparisons")
    page.wait_for_selector("body[data-ready=yes]", timeout=30_000)
    rows = page.locator("#comparisons-table tr[data-comparison]")
    assert rows.count() == len(listed)
    row = page.locator(f'#comparisons-table tr[data-comparison="{finished.id}"]')
    assert row.locator("[data-status]").inner_text() == "SUCCEEDED"
    assert row.locator("td").nth(3).inner_text().startswith(finished.baseline)
    row.locator("a").click()
    page.wait_for_url(f"**/comparisons/{finished.id}")


def _text_of(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def test_study_page_shows_the_apis_numbers(
    page, svc: LiveService, study: Study, tmp_path: Path
) -> None:
    assert study.phase == "done" and study.status.value == "SUCCEEDED"
    page.goto(f"{svc.url}/studies/{study.id}#token={svc.admin_token}")
    page.wait_for_selector("body[data-ready=yes]", timeout=30_000)
    assert "token=" not in page.url  # taken out of the address bar
    assert page.title().startswith(study.name)
    # API strings are text, never markup
    assert page.locator("h1").inner_text().startswith(study.name)
    assert page.locator("#content i").count() == 0
    assert page.locator('[data-field="phase"]').inner_text() == "done"
    ended = sum(study.jobs.values())
    assert page.locator('[data-field="jobs_ended"]').inner_text() == f"{ended}/{study.plan.jobs}"
    assert page.locator('[data-field="jobs"]').inner_text() == f"succeeded {ended}"
    assert (
        page.locator('[data-field="plan_jobs"]')
        .inner_text()
        .startswith(f"{study.plan.jobs} ({study.plan.tuning_jobs} tuning")
    )
    assert page.locator('[data-field="plan_tokens"]').inner_text() == f"{study.plan.tokens:,}"
    verdicts = set()
    for batch in study.batches:
        table = page.locator(f"#batch-{batch.batch_size}")
        assert (
            f"target {batch.target:.4g}"
            in page.locator(f'.batch[data-batch="{batch.batch_size}"] h2').inner_text()
        )
        assert table.locator("tr[data-arm]").count() == len(batch.arms)
        for arm in batch.arms:
            row = table.locator(f'tr[data-arm="{arm.name}"]')
            is_base = arm.name == study.baseline

            def cell(field: str, row=row):
                return row.locator(f'[data-field="{field}"]')

            loss = cell("final_val_loss_mean")
            assert float(loss.get_attribute("data-value")) == pytest.approx(
                arm.final_val_loss_mean, rel=1e-12
            )
            assert arm.final_val_loss_ci is not None
            lo, hi = arm.final_val_loss_ci
            assert loss.inner_text() == f"{arm.final_val_loss_mean:.4g} [{lo:.4g}, {hi:.4g}]"
            delta = cell("delta_vs_baseline")
            verdict = cell("verdict")
            if is_base:
                assert delta.get_attribute("data-value") == "" and delta.inner_text() == "-"
                assert verdict.inner_text() == "baseline"
            else:
                assert float(delta.get_attribute("data-value")) == pytest.approx(
                    arm.delta_vs_baseline, rel=1e-12, abs=1e-15
                )
                assert verdict.get_attribute("data-value") == arm.verdict
                assert verdict.inner_text() == arm.verdict
                verdicts.add(arm.verdict)
            steps = cell("steps_to_target")
            assert arm.steps_to_target is not None
            assert float(steps.get_attribute("data-value")) == arm.steps_to_target
            assert steps.inner_text() == f"{arm.steps_to_target:.4g} ({arm.speedup:.2f}x)"
            for field in ("tokens_per_s_ratio", "peak_memory_ratio", "optimizer_state_ratio"):
                assert cell(field).inner_text() == f"{getattr(arm, field):.2f}x", field
            chosen = cell("chosen")
            assert chosen.get_attribute("data-edge") == ",".join(arm.on_edge)
            assert chosen.locator(".edge").count() == (1 if arm.on_edge else 0)
            assert row.locator("a[href^='/jobs/']").count() == len(arm.final_job_ids)
    assert verdicts == {"better", "inside the noise"}
    for point in study.scaling:
        shown = page.locator(
            f'#scaling-table tr[data-arm="{point.arm}"] [data-batch="{point.batch_size}"]'
        ).inner_text()
        if point.reached:
            assert shown == _text_of(point.steps_to_target)
        else:
            assert shown == "not reached"
    assert page.locator("#findings li").all_inner_texts() == study.findings
    # the plot, fetched with the token and shown from a blob: URL (the CSP allows blob:)
    page.wait_for_selector("#study-plot[data-state=yes] img", timeout=30_000)
    img = page.locator("#study-plot img")
    assert img.get_attribute("src").startswith("blob:")
    assert img.evaluate("i => i.naturalWidth") > 200
    shot = _artifacts(tmp_path) / "dashboard-study.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_studies_page_lists_what_the_api_lists(page, svc: LiveService, study: Study) -> None:
    with Client(svc.url, svc.admin_token) as client:
        listed = client.studies_page(limit=100).items
    page.goto(f"{svc.url}/studies")
    page.wait_for_selector("body[data-ready=yes]", timeout=30_000)
    assert page.locator("#studies-table tr[data-study]").count() == len(listed)
    row = page.locator(f'#studies-table tr[data-study="{study.id}"]')
    assert row.locator("td").nth(1).inner_text() == study.name
    assert row.locator('[data-field="phase"]').inner_text() == "done"
    assert row.locator("[data-status]").inner_text() == "SUCCEEDED"
    assert row.locator('[data-field="jobs"]').inner_text() == str(sum(study.jobs.values()))
    assert row.locator('[data-field="batch_sizes"]').inner_text() == "8"
    assert row.locator('[data-field="arms"]').inner_text() == "adamw, alto, adamw-wd"
    row.locator("a").click()
    page.wait_for_url(f"**/studies/{study.id}")
    page.wait_for_selector("body[data-ready=yes]", timeout=30_000)


def test_jobs_and_job_pages(page, svc: LiveService, finished: Comparison, tmp_path: Path) -> None:
    job_ids = [j for arm in finished.arms for j in arm.job_ids]
    page.goto(f"{svc.url}/")
    page.wait_for_selector("body[data-ready=yes]", timeout=30_000)
    for job_id in job_ids:
        row = page.locator(f'#jobs-table tr[data-job="{job_id}"]')
        assert row.locator("[data-status]").inner_text() == "SUCCEEDED"
    page.select_option("#status-filter", "FAILED")
    # locator assertions, not wait_for_function: the page's CSP forbids eval'd script
    expect(page.locator("#jobs-table tr[data-job]")).to_have_count(0, timeout=10_000)
    with Client(svc.url, svc.admin_token) as client:
        job = client.job(job_ids[0])
    page.goto(f"{svc.url}/jobs/{job.id}")
    page.wait_for_selector("body[data-ready=yes]", timeout=30_000)
    val = page.locator('[data-field="val/loss"]').inner_text()
    assert val == f"{job.latest_metrics['val/loss'].value:.4g}"
    assert page.locator('[data-field="step"]').inner_text() == "12/12"
    # train and validation loss, the history's numbers
    expect(page.locator("#chart-loss")).to_have_attribute("data-state", "yes", timeout=20_000)
    with Client(svc.url, svc.admin_token) as client:
        hist = client.metrics(job.id, max_points=1000)
    drawn = {t["meta"]["metric"]: t for t in _traces(page, "chart-loss")}
    assert sorted(drawn) == sorted([TRAIN_LOSS, VAL_LOSS])
    for series in hist.series:
        if series.name in drawn:
            assert drawn[series.name]["x"] == series.steps
            assert drawn[series.name]["y"] == series.values
    assert page.locator("#chart-loss .scatterlayer .trace").count() == 2
    page.screenshot(path=str(_artifacts(tmp_path) / "dashboard-job.png"), full_page=True)


def test_live_job_page_follows_a_running_job(page, svc: LiveService) -> None:
    spec = {**TINY_SPEC, "training": {**TINY_SPEC["training"], "steps": 150}}
    with Client(svc.url, svc.admin_token) as client:
        job = client.submit(spec)
        page.goto(f"{svc.url}/jobs/{job.id}")
        page.wait_for_selector("body[data-ready=yes]", timeout=30_000)
        page.wait_for_selector('[data-status="SUCCEEDED"]', timeout=60_000)  # no reload
        final = client.job(job.id)
    assert final.status.value == "SUCCEEDED"
    assert page.locator('[data-field="step"]').inner_text() == "150/150"


def test_without_a_token_the_page_asks_for_one(browser, svc: LiveService) -> None:
    context = browser.new_context()
    p = context.new_page()
    try:
        p.goto(f"{svc.url}/")
        p.wait_for_selector("#login:not([hidden])", timeout=15_000)
        p.fill("#login-token", "alto_wrong_token")
        p.click("#login-form button")
        expect(p.locator("#login-error")).to_contain_text("not accepted", timeout=15_000)
        p.fill("#login-token", svc.admin_token)
        p.click("#login-form button")
        p.wait_for_selector("body[data-ready=yes]", timeout=15_000)
        assert p.locator("#login").is_hidden()
    finally:
        context.close()


def test_unknown_job_shows_the_apis_message(browser, svc: LiveService) -> None:
    context = browser.new_context()
    p = context.new_page()
    try:
        p.goto(f"{svc.url}/jobs/0123456789abcdef#token={svc.admin_token}")
        p.wait_for_selector("#error:not([hidden])", timeout=15_000)
        text = p.locator("#error").inner_text()
        assert text.startswith("404") and "0123456789abcdef" in text
        assert p.locator("#live").inner_text() == ""  # a 404 is not retried
    finally:
        context.close()


def test_api_docs_render_under_the_pages_csp_without_a_cdn(page, svc: LiveService) -> None:
    """Swagger UI from the service's own files, started by a script file (no inline
    script): it renders the API under the strict CSP, and the page fixture fails on any
    console error (a CSP violation is one)."""
    requested: list[str] = []
    page.on("request", lambda req: requested.append(req.url))
    page.goto(f"{svc.url}/docs")
    expect(page.locator(".swagger-ui .title")).to_contain_text("ALTO service", timeout=20_000)
    expect(page.locator(".opblock-summary-path").first).to_be_visible()
    assert requested and all(url.startswith(svc.url) for url in requested), requested
    # Swagger UI keeps no bearer token of its own (persistAuthorization off)
    assert "authorized" not in page.evaluate("() => Object.keys(localStorage)")
