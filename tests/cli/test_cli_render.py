"""Number formatting shared by the terminal table, the HTML report and the docs."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from alto_client.models import (
    ArmSummary,
    Comparison,
    ComparisonInfo,
    Job,
    JobStatus,
    LatestMetric,
)
from alto_client.render import (
    comparison_rows,
    comparison_table,
    comparisons_table,
    fmt_bytes,
    fmt_duration,
    fmt_mean_std,
    fmt_metric,
    fmt_num,
    fmt_rate,
    fmt_signed,
    jobs_table,
)
from alto_client.report import comparison_html
from rich.console import Console


def test_formatters() -> None:
    assert fmt_num(None) == "-" and fmt_num(float("nan")) == "nan"
    assert fmt_num(3.14159) == "3.142" and fmt_num(float("-inf")) == "-inf"
    assert fmt_mean_std(2.0, 0.0) == "2" and fmt_mean_std(2.0, 0.01234) == "2 ± 0.012"
    assert fmt_signed(-0.3421) == "-0.342" and fmt_signed(1.5, 3, "%") == "+1.5%"
    assert fmt_bytes(512) == "512 B" and fmt_bytes(3 * 1024**2) == "3.0 MiB"
    assert fmt_duration(12.34) == "12.3s" and fmt_duration(125) == "2m05s"
    assert fmt_duration(3 * 3600 + 60) == "3h01m"
    assert fmt_metric("mem/peak_rss_bytes", 1.001e9) == "954.6 MiB"
    assert fmt_metric("model/params", 706800.0) == "706,800"
    assert fmt_metric("val/loss", 2.28) == "2.28"
    assert fmt_rate(9042.4) == "9042" and fmt_rate(12_120) == "12.1k" and fmt_rate(3.4e6) == "3.4M"


def _comparison() -> Comparison:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    common = {"status": JobStatus.SUCCEEDED, "seeds": [1]}
    return Comparison(
        id="c1",
        name="x <b>",
        owner="o",
        status=JobStatus.SUCCEEDED,
        baseline="adamw",
        seeds=[1],
        created_at=now,
        arms=[
            ArmSummary(
                name="alto",
                job_ids=["j1"],
                final_val_loss_mean=2.5,
                val_loss_delta_vs_baseline=-0.25,
                reached_baseline=False,
                **common,
            ),
            ArmSummary(name="adamw", job_ids=["j2"], final_val_loss_mean=2.75, **common),
        ],
    )


def test_rows_mark_the_baseline_and_not_reached() -> None:
    alto, adamw = comparison_rows(_comparison())
    assert alto[0] == "alto" and alto[2] == "2.5" and alto[4] == "-0.25"
    assert alto[5] == "not reached"
    assert adamw[0] == "adamw (baseline)" and adamw[4] == "-" and adamw[5] == "baseline"


def test_html_report_escapes_and_embeds() -> None:
    page = comparison_html(_comparison(), b"\x89PNG fake")
    assert "x &lt;b&gt;" in page and "<b>" not in page.replace("<body>", "")
    assert "data:image/png;base64,iVBORyBmYWtl" in page


def test_demo_reports_a_missing_spec_and_an_unusable_data_dir(tmp_path) -> None:
    from alto_client.cli import app
    from typer.testing import CliRunner

    runner = CliRunner()
    missing = runner.invoke(app, ["demo", "--spec", str(tmp_path / "none.yaml"), "--exit"])
    assert missing.exit_code == 1 and "--spec: no such file" in missing.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\n")
    bad_dir = runner.invoke(
        app, ["demo", "--spec", str(spec), "--data-dir", str(blocker), "--exit"]
    )
    assert bad_dir.exit_code == 1 and str(blocker) in bad_dir.stderr
    assert "Traceback" not in bad_dir.output


def _job(i: int, status: JobStatus) -> Job:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    point = LatestMetric(step=87, value=2.2871234, time=1.0)
    return Job(
        id=f"{i:032x}",
        name=f"tiny-moe-cpu/alto/seed{i}-with-a-long-name",
        owner="alice@example.org",
        tags=[],
        status=status,
        spec={"training": {"steps": 100}},
        created_at=now,
        updated_at=now,
        latest_metrics={"train/loss": point, "val/loss": point},
    )


def _render(table, width: int) -> list[str]:
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(table)
    return console.export_text().splitlines()


@pytest.mark.parametrize("width", [80, 100])
def test_tables_read_well_at_80_columns(width: int) -> None:
    """Ids, statuses and numbers are never cut ("SUCC…", "2.2…"); lines fit the width."""
    jobs = [_job(i, s) for i, s in enumerate(JobStatus)]
    lines = _render(jobs_table(jobs, width), width)
    text = "\n".join(lines)
    assert max(len(line) for line in lines) <= width
    for job in jobs:
        assert job.id in text and job.status.value in text
    assert "2.287" in text and "87/100" in text
    comp = _comparison()
    lines = _render(comparison_table(comp, width), width)
    text = "\n".join(lines)
    assert max(len(line) for line in lines) <= width
    assert "…" not in text
    for needle in ("alto", "adamw (baseline)", "SUCCEEDED", "2.5", "-0.25", "not reached"):
        assert needle in text, needle
    info = ComparisonInfo(
        id="f" * 32,
        name="a long comparison name that would push the table wide",
        owner="alice@example.org",
        status=JobStatus.RUNNING,
        baseline="adamw",
        arms=["alto", "adamw", "e"],
        seeds=[1, 2, 3],
        jobs=9,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    lines = _render(comparisons_table([info], width), width)
    text = "\n".join(lines)
    assert max(len(line) for line in lines) <= width
    assert "f" * 32 in text and "RUNNING" in text and "adamw, alto, e" in text


def test_wide_tables_show_every_column() -> None:
    jobs = [_job(1, JobStatus.SUCCEEDED)]
    assert "alice@example.org" in "\n".join(_render(jobs_table(jobs, None), 200))
    assert "alice@example.org" not in "\n".join(_render(jobs_table(jobs, 80), 80))
    wide = "\n".join(_render(comparison_table(_comparison(), None), 200))
    assert "final val loss" in wide and "peak mem" in wide  # one row per arm, all columns
