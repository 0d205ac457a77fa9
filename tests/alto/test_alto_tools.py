"""The spirals example and the benchmark run end to end (tiny settings; not a timing test)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_script(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_bench():
    return load_script(ROOT / "bench" / "optim_step.py", "optim_step")


def test_spirals_example_prints_a_row_per_optimizer(capsys: pytest.CaptureFixture[str]) -> None:
    spirals = load_script(ROOT / "examples" / "spirals.py", "spirals")
    assert spirals.main(["--steps", "3", "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    for name in ("AdamW", "Lamb", "ALTO", "E(AdamW)"):
        assert f"| {name} |" in out


def test_bench_reports_ratios_and_state_bytes(tmp_path: Path) -> None:
    bench = load_bench()
    out = tmp_path / "bench.json"
    args = ["--model", "tiny", "--reps", "1", "--warmup", "1", "--device", "cpu"]
    assert bench.main([*args, "--json", str(out)]) == 0
    (report,) = json.loads(out.read_text())
    res = report["results"]
    assert set(res) >= {
        "adamw_foreach",
        "alto_blocked",
        "alto_foreach",
        "alto_single",
        "published_loop",
    }
    assert res["alto_blocked"]["implementation"] == "blocked"
    assert res["E(adamw_foreach)"]["implementation"] == "blocked"
    # fp32: AdamW keeps m, v; ALTO m, v, c; E(AdamW) c + m, v; the published loop 6 buffers.
    assert res["adamw_foreach"]["state_bytes_per_param"] == 8
    assert res["alto_foreach"]["state_bytes_per_param"] == 12
    assert res["alto_blocked"]["state_bytes_per_param"] == 12
    assert res["E(adamw_foreach)"]["state_bytes_per_param"] == 12
    assert res["published_loop"]["state_bytes_per_param"] == 24
    assert all(r["median_ms"] > 0 for r in res.values())


def test_bench_shapes_are_gpt2_small() -> None:
    bench = load_bench()
    assert bench.sum_params(bench.gpt2_shapes("gpt2-small")) == 124_439_808
