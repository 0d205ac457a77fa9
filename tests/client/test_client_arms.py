"""Arm shorthands, seed lists, spec loading and the retry policy: pure logic."""

from __future__ import annotations

from pathlib import Path

import pytest
from alto_client.client import build_arms, load_spec, parse_arm, resolve_token, resolve_url
from alto_client.models import ComparisonRequest
from alto_client.spec import JobSpec, SpecError

SPEC_YAML = """
name: tiny
training: {steps: 3, global_batch_size: 8, micro_batch_size: 4, lr: 0.003, seed: 7}
optimizer: {name: adamw, weight_decay: 0.05}
"""


def test_parse_arm_forms() -> None:
    assert parse_arm("alto") == {"name": "alto", "optimizer": {"name": "alto"}}
    assert parse_arm("adamw:beta2=0.95,eps=1e-8") == {
        "name": "adamw",
        "optimizer": {"name": "adamw", "beta2": 0.95, "eps": 1e-8},
    }
    assert parse_arm("alto-hi=alto:alpha=1") == {
        "name": "alto-hi",
        "optimizer": {"name": "alto", "alpha": 1},
    }


@pytest.mark.parametrize("bad", ["", ":lr=1", "alto:lr", "alto:=3"])
def test_parse_arm_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError, match="arm"):
        parse_arm(bad)


def test_build_arms_reuses_the_specs_own_optimizer_section() -> None:
    spec = JobSpec.from_yaml(SPEC_YAML)
    alto, adamw = build_arms(spec, ["alto", "adamw"])
    assert alto.optimizer.name == "alto"
    assert adamw.optimizer.name == "adamw" and adamw.optimizer.weight_decay == 0.05
    (custom,) = build_arms(spec, ["adamw:weight_decay=0.2"])
    assert custom.optimizer.weight_decay == 0.2


def test_build_arms_reports_bad_hyperparameter_by_field() -> None:
    spec = JobSpec.from_yaml(SPEC_YAML)
    with pytest.raises(ValueError, match="beta2"):
        build_arms(spec, ["adamw:beta2=1.5"])


def test_comparison_body_seeds_start_at_the_specs_seed() -> None:
    from alto_client import core

    call = core.submit_comparison(SPEC_YAML, ["alto", "adamw"], 3, None, "n")
    request = ComparisonRequest.model_validate(call.options["json"])
    assert request.seeds == [7, 8, 9]
    assert request.baseline == "adamw"
    assert [a.name for a in request.arms] == ["alto", "adamw"]


def test_load_spec_paths_text_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(SPEC_YAML)
    assert load_spec(path).training.steps == 3
    assert load_spec(str(path)).name == "tiny"
    assert load_spec(SPEC_YAML).optimizer.name == "adamw"
    assert load_spec({"name": "m"}).name == "m"
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError) as info:
        load_spec("training: {steps: 0, micro_batch_size: 3}\n")
    fields = {p.field for p in info.value.problems}
    assert "training.steps" in fields


def test_url_and_token_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALTO_URL", "http://127.0.0.1:9999/")
    monkeypatch.setenv("ALTO_TOKEN", " tok ")
    assert resolve_url(None) == "http://127.0.0.1:9999"
    assert resolve_token(None) == "tok"
    assert resolve_url("https://x.example") == "https://x.example"
    monkeypatch.delenv("ALTO_URL")
    monkeypatch.delenv("ALTO_TOKEN")
    assert resolve_url(None) == "http://127.0.0.1:8000"
    assert resolve_token(None) is None
    with pytest.raises(ValueError, match="url must start with http"):
        resolve_url("127.0.0.1:8000")
