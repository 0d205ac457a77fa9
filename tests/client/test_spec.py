"""The job spec: defaults, loading, and every cross-field rule with its field path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from alto_client.metrics import ALL_METRICS, TRAIN_LOSS, MetricBatch, MetricPoint
from alto_client.spec import (
    E_BASE_HYPERPARAMETERS,
    AdamWSpec,
    AltoSpec,
    ESpec,
    JobSpec,
    SpecError,
    alto_paper_defaults,
    parse_override,
    parse_overrides,
)
from pydantic import ValidationError

REPO = Path(__file__).resolve().parents[2]


def problems(text: str) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        JobSpec.from_yaml(text)
    return {p.field: p.message for p in info.value.problems}


def test_defaults_are_valid_and_fill_alto_paper_defaults() -> None:
    spec = JobSpec()
    assert isinstance(spec.optimizer, AltoSpec)
    assert (spec.optimizer.alpha, spec.optimizer.beta1) == (0.5, 0.01)
    assert spec.data_parallel_size == 1
    assert spec.grad_accumulation_steps == 2
    assert spec.vocab_size == 257


@pytest.mark.parametrize(
    ("batch", "expected"), [(512, (0.5, 0.01)), (1023, (0.5, 0.01)), (1024, (-5.0, 0.99))]
)
def test_alto_defaults_switch_at_1k(batch: int, expected: tuple[float, float]) -> None:
    assert alto_paper_defaults(batch) == expected
    spec = JobSpec.from_dict(
        {
            "training": {"global_batch_size": batch, "micro_batch_size": 1},
            "optimizer": {"name": "alto"},
        }
    )
    assert (spec.optimizer.alpha, spec.optimizer.beta1) == expected


def test_given_alto_hyperparameters_are_kept() -> None:
    spec = JobSpec.from_yaml("optimizer: {name: alto, alpha: 0.25}\n")
    assert spec.optimizer.alpha == 0.25 and spec.optimizer.beta1 == 0.01


def test_optimizer_lr_overrides_training_lr_and_scales_min_lr() -> None:
    spec = JobSpec.from_yaml(
        "training: {lr: 0.002, min_lr: 0.0002}\noptimizer: {name: alto, lr: 0.02}\n"
    )
    assert spec.peak_lr == 0.02 and spec.final_lr == pytest.approx(0.002)
    plain = JobSpec.from_yaml("training: {lr: 0.002, min_lr: 0.0002}\noptimizer: {name: adamw}\n")
    assert plain.peak_lr == 0.002 and plain.final_lr == pytest.approx(0.0002)
    assert "greater than 0" in problems("optimizer: {name: adamw, lr: 0.0}\n")["optimizer.lr"]


def test_optimizer_union_discriminates_on_name() -> None:
    assert isinstance(JobSpec.from_yaml("optimizer: {name: adamw}\n").optimizer, AdamWSpec)
    e = JobSpec.from_yaml(
        "optimizer: {name: e, base: sgd, base_hyperparameters: {momentum: 0.9}}\n"
    ).optimizer
    assert isinstance(e, ESpec) and e.base == "sgd" and e.alpha == 0.5
    bad = problems("optimizer: {name: lion}\n")
    assert "lion" in bad["optimizer"] and "'alto', 'adamw', 'e'" in bad["optimizer"]
    bad = problems("optimizer: {name: e, base_hyperparameters: {lr: 0.1}}\n")
    assert "training.lr" in bad["optimizer.base_hyperparameters"]


@pytest.mark.parametrize(
    ("optimizer", "sharded", "weight_decay"),
    [
        ("{name: e, base: adamw}", True, 0.01),
        (
            "{name: e, base: adam, base_hyperparameters: {betas: [0.9, 0.95], eps: 1.0e-6}}",
            True,
            0.0,
        ),
        ("{name: e, base: adamw, base_hyperparameters: {weight_decay: 0.1}}", True, 0.1),
        ("{name: e, base: adamw, base_hyperparameters: {amsgrad: true}}", False, 0.01),
        ("{name: e, base: sgd, base_hyperparameters: {momentum: 0.9}}", False, 0.0),
    ],
)
def test_e_runs_sharded_around_plain_adam_and_reports_its_weight_decay(
    optimizer: str, sharded: bool, weight_decay: float
) -> None:
    e = JobSpec.from_yaml(f"optimizer: {optimizer}\n").optimizer
    assert isinstance(e, ESpec)
    assert e.sharded is sharded and e.weight_decay == weight_decay
    bf16 = f"optimizer: {optimizer}\ntraining: {{precision: bf16}}\n"
    if sharded:
        assert JobSpec.from_yaml(bf16).training.precision == "bf16"
    else:
        assert "runs in fp32 only" in problems(bf16)["training.precision"]


@pytest.mark.parametrize(
    ("hyper", "message"),
    [
        ("{betas: [0.9]}", "betas must be [beta1, beta2]"),
        ("{betas: [0.9, 1.0]}", "betas must be [beta1, beta2]"),
        ("{eps: 0}", "eps must be a finite number > 0"),
        ("{weight_decay: -0.1}", "weight_decay must be a finite number >= 0"),
        ("{amsgrad: 1}", "amsgrad must be true or false"),
        ("{momentum: 0.9}", "torch's adamw has no such setting here; allowed: amsgrad, betas"),
        ("{fused: true}", "torch's adamw has no such setting"),
    ],
)
def test_e_adam_hyperparameters_are_checked_before_any_worker_starts(
    hyper: str, message: str
) -> None:
    bad = problems(f"optimizer: {{name: e, base: adamw, base_hyperparameters: {hyper}}}\n")
    assert any(message in m for m in bad.values()), bad


@pytest.mark.parametrize(
    ("base", "hyper", "message"),
    [
        ("sgd", "{momentum: -0.5}", "momentum must be a finite number >= 0"),
        ("sgd", "{nesterov: true}", "nesterov needs momentum > 0 and dampening 0"),
        ("sgd", "{nesterov: true, momentum: 0.9, dampening: 0.1}", "dampening 0"),
        ("sgd", "{betas: [0.9, 0.99]}", "torch's sgd has no such setting"),
        ("rmsprop", "{alpha: 1.5}", "alpha must be a number in [0, 1)"),
        ("rmsprop", "{centered: yes}", None),  # YAML's yes is true: allowed
        ("adagrad", "{lr_decay: .inf}", "lr_decay must be a finite number >= 0"),
        ("nadam", "{momentum_decay: 0.004, decoupled_weight_decay: true}", None),
        ("radam", "{eps: -1e-8}", "eps must be a finite number > 0"),
    ],
)
def test_every_e_base_has_its_hyperparameters_checked_at_submission(
    base: str, hyper: str, message: str | None
) -> None:
    text = f"optimizer: {{name: e, base: {base}, base_hyperparameters: {hyper}}}\n"
    if message is None:
        JobSpec.from_yaml(text)
        return
    bad = problems(text)
    assert any(message in m for m in bad.values()), bad


def test_the_base_hyperparameter_table_matches_torch() -> None:
    """Every setting the spec allows is a keyword of the torch optimizer it configures."""
    import inspect

    torch = pytest.importorskip("torch")
    classes = {
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "sgd": torch.optim.SGD,
        "rmsprop": torch.optim.RMSprop,
        "adagrad": torch.optim.Adagrad,
        "nadam": torch.optim.NAdam,
        "radam": torch.optim.RAdam,
    }
    assert set(classes) == set(E_BASE_HYPERPARAMETERS)
    for base, allowed in E_BASE_HYPERPARAMETERS.items():
        accepted = set(inspect.signature(classes[base]).parameters)
        assert set(allowed) <= accepted, (base, set(allowed) - accepted)


def test_workers_and_cpus_have_sane_bounds() -> None:
    assert (
        "greater than or equal to 0.25"
        in problems("resources: {cpus_per_worker: 0.001}\n")["resources.cpus_per_worker"]
    )
    assert (
        "less than or equal to 4096"
        in problems("resources: {workers: 100000}\n")["resources.workers"]
    )


def test_yaml_scientific_notation_without_dot_is_a_float() -> None:
    spec = JobSpec.from_yaml("training: {lr: 3e-4, min_lr: 1e-5}\n")
    assert spec.training.lr == pytest.approx(3e-4)
    assert spec.training.min_lr == pytest.approx(1e-5)


def test_strict_and_unknown_keys_rejected_all_at_once() -> None:
    bad = problems("model: {hidden_size: '128', hiden: 3}\ntraining: {stepz: 3}\n")
    assert set(bad) == {"model.hidden_size", "model.hiden", "training.stepz"}
    assert "'128'" in bad["model.hidden_size"]


def test_every_cross_field_problem_is_listed_with_its_field() -> None:
    bad = problems(
        """
model: {hidden_size: 128, num_attention_heads: 3, num_experts: 3, moe_router_topk: 4,
        num_layers: 3}
parallel: {tensor: 2, expert: 2, pipeline: 2}
resources: {workers: 6}
training: {global_batch_size: 10, micro_batch_size: 4, min_lr: 1.0, lr: 0.1}
optimizer: {name: alto, alpha: 5.0, beta1: 0.5}
"""
    )
    assert "divisible by num_attention_heads 3" in bad["model.hidden_size"]
    assert "parallel.tensor 2" in bad["model.num_attention_heads"]
    assert "parallel.expert 2" in bad["model.num_experts"]
    assert "at most num_experts 3" in bad["model.moe_router_topk"]
    assert "multiple of tensor*expert*pipeline" in bad["resources.workers"]
    assert "num_layers 3 must be divisible by parallel.pipeline 2" in bad["model.num_layers"]
    assert "parallel.pipeline" not in bad  # pipeline parallelism itself is supported
    assert "must divide global_batch_size 10" in bad["training.micro_batch_size"]
    assert "min_lr" in bad["training.min_lr"]
    assert "1/(1-beta1)" in bad["optimizer.alpha"]


def test_global_batch_must_split_over_data_parallel_ranks() -> None:
    bad = problems(
        "resources: {workers: 4}\ntraining: {global_batch_size: 8, micro_batch_size: 4}\n"
    )
    assert "micro_batch_size*data_parallel = 4*4 = 16" in bad["training.global_batch_size"]
    ok = JobSpec.from_yaml(
        "resources: {workers: 4}\nparallel: {tensor: 2}\n"
        "training: {global_batch_size: 16, micro_batch_size: 4}\n"
    )
    assert ok.data_parallel_size == 2 and ok.grad_accumulation_steps == 2
    assert ok.sequence_parallel is True


def test_pipeline_parallel_rules() -> None:
    """PP > 1 is accepted; the layers must split evenly over the stages, the workers over
    tensor*expert*pipeline, and the global batch over the data-parallel ranks left."""
    ok = JobSpec.from_yaml(
        "model: {num_layers: 4}\nparallel: {pipeline: 2}\nresources: {workers: 4}\n"
        "training: {global_batch_size: 8, micro_batch_size: 2}\n"
    )
    assert ok.parallel.pipeline == 2 and ok.data_parallel_size == 2
    assert ok.grad_accumulation_steps == 2
    bad = problems("model: {num_layers: 3}\nparallel: {pipeline: 2}\nresources: {workers: 2}\n")
    assert set(bad) == {"model.num_layers"}, bad
    assert "num_layers 3 must be divisible by parallel.pipeline 2" in bad["model.num_layers"]
    assert "num_layers/pipeline layers" in bad["model.num_layers"]
    bad = problems("model: {num_layers: 1}\nparallel: {pipeline: 2}\nresources: {workers: 2}\n")
    assert "num_layers 1 must be divisible by parallel.pipeline 2" in bad["model.num_layers"]
    bad = problems("parallel: {pipeline: 2, tensor: 2}\nresources: {workers: 6}\n")
    assert "tensor*expert*pipeline = 2*1*2 = 4" in bad["resources.workers"]
    bad = problems(
        "parallel: {pipeline: 2}\nresources: {workers: 4}\n"
        "training: {global_batch_size: 6, micro_batch_size: 2}\n"
    )
    assert "micro_batch_size*data_parallel = 2*2 = 4" in bad["training.global_batch_size"]
    assert "workers/(tensor*pipeline)" in bad["training.global_batch_size"]


def test_expert_parallel_needs_experts_and_moe_tp_needs_sp() -> None:
    bad = problems("parallel: {expert: 2}\nresources: {workers: 2}\n")
    assert "num_experts is 0" in bad["parallel.expert"]
    bad = problems(
        "model: {num_experts: 4}\nparallel: {tensor: 2, sequence_parallel: false}\n"
        "resources: {workers: 2}\n"
    )
    assert "sequence_parallel" in bad["parallel.sequence_parallel"]


def test_data_source_rules() -> None:
    assert "prefix" in problems("data: {source: indexed}\n")["data.path"]
    assert "at least one" in problems("data: {source: files}\n")["data.files"]
    assert ".jsonl" in problems("data: {source: files, files: [a.csv]}\n")["data.files.0"]
    assert "only for source 'indexed'" in problems("data: {path: /x}\n")["data.path"]
    bad = problems("data: {tokenizer: {kind: bpe}}\n")
    assert "vocab_size" in bad["data.tokenizer.vocab_size"]
    bad = problems("data: {tokenizer: {kind: external, vocab_size: 100}}\n")
    assert "only for source 'indexed'" in bad["data.tokenizer.kind"]
    spec = JobSpec.from_yaml(
        "data: {source: indexed, path: /d/x, tokenizer: {kind: external, vocab_size: 50257}}\n"
    )
    assert spec.vocab_size == 50257


def test_schedule_and_eval_rules() -> None:
    bad = problems("training: {steps: 10, warmup_steps: 10}\n")
    assert "decay length 10" in bad["training.warmup_steps"]
    bad = problems("training: {eval_interval: 5, eval_batches: 0}\n")
    assert "eval_batches" in bad["training.eval_batches"]


def test_report_url_is_validated_and_token_hidden() -> None:
    bad = problems("report: {url: 'ftp://x', job_id: j1, token: t}\n")
    assert "http(s) URL" in bad["report.url"]
    spec = JobSpec.from_yaml("report: {url: 'http://127.0.0.1:8000/', job_id: j1, token: s3cr3t}\n")
    assert spec.report is not None and spec.report.url == "http://127.0.0.1:8000"
    assert "s3cr3t" not in repr(spec)


def test_json_round_trip_and_file_loading(tmp_path: Path) -> None:
    spec = JobSpec.from_yaml("name: demo\ntags: [a, b]\noptimizer: {name: adamw}\n")
    again = JobSpec.from_json(spec.model_dump_json())
    assert again == spec
    path = tmp_path / "s.json"
    path.write_text(spec.model_dump_json())
    assert JobSpec.load(path) == spec
    assert JobSpec.from_json(str(path)) == spec
    with pytest.raises(SpecError, match="cannot read spec file"):
        JobSpec.from_yaml(str(tmp_path / "missing.yaml"))
    with pytest.raises(SpecError, match="not valid JSON"):
        JobSpec.from_json("{nope")
    with pytest.raises(SpecError, match="not valid YAML"):
        JobSpec.from_yaml("a: [1,\n")
    with pytest.raises(SpecError, match="mapping"):
        JobSpec.from_yaml("- 1\n")
    assert JobSpec.from_yaml("name: demo.yaml").name == "demo.yaml"  # text, not a path


def test_with_overrides_revalidates() -> None:
    spec = JobSpec()
    assert spec.with_overrides({"training.steps": 7}).training.steps == 7
    with pytest.raises(SpecError) as info:
        spec.with_overrides({"training.micro_batch_size": 3})
    assert info.value.problems[0].field == "training.micro_batch_size"
    with pytest.raises(SpecError, match="no such field"):
        spec.with_overrides({"training.stepz": 7})


def test_model_validate_raises_pydantic_error_with_locations() -> None:
    """The service validates request bodies with pydantic directly; locations must survive."""
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate({"model": {"num_attention_heads": 3}})
    assert info.value.errors()[0]["loc"] == ("model", "hidden_size")


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path: Path) -> None:
    """Job specs load as specs, study files (study-*.yaml) as studies."""
    if path.name.startswith("study-"):
        from alto_client.study import load_study

        load_study(path)
    else:
        JobSpec.load(path)


def test_metric_points_round_trip_including_nan() -> None:
    batch = MetricBatch(
        points=[
            MetricPoint(step=1, name=TRAIN_LOSS, value=2.5, time=1.7e9),
            MetricPoint(step=2, name=TRAIN_LOSS, value=math.nan, time=1.7e9),
        ]
    )
    again = MetricBatch.model_validate_json(batch.model_dump_json())
    assert again.points[0] == batch.points[0] and math.isnan(again.points[1].value)
    assert math.isnan(json.loads(batch.model_dump_json())["points"][1]["value"])
    assert len(set(ALL_METRICS)) == len(ALL_METRICS) == 15
    with pytest.raises(ValidationError):
        MetricPoint(step="1", name=TRAIN_LOSS, value=1.0, time=0.0)


# ---------------------------------------------------------------- one override rule


def test_switching_the_optimizer_resets_its_section_whatever_the_order() -> None:
    spec = JobSpec.from_yaml("optimizer: {name: alto, alpha: 0.3, weight_decay: 0.5}\n")
    for order in (
        {"optimizer.name": "adamw", "optimizer.beta2": 0.95},
        {"optimizer.beta2": 0.95, "optimizer.name": "adamw"},
    ):
        switched = spec.with_overrides(order)
        assert isinstance(switched.optimizer, AdamWSpec)
        assert switched.optimizer.beta2 == 0.95
        assert switched.optimizer.weight_decay == AdamWSpec().weight_decay  # not ALTO's 0.5
    same = spec.with_overrides({"optimizer.name": "alto", "optimizer.eps": 1e-7})
    assert same.optimizer.alpha == 0.3 and same.optimizer.eps == 1e-7  # not a switch
    whole = spec.with_overrides({"optimizer": {"name": "e", "base": "sgd"}})
    assert isinstance(whole.optimizer, ESpec) and whole.optimizer.base == "sgd"


def test_overrides_name_unknown_fields_and_clamp_the_schedule() -> None:
    spec = JobSpec.from_yaml("training: {steps: 100, warmup_steps: 50, lr_decay_steps: 90}\n")
    short = spec.with_overrides({"training.steps": 10})
    assert (short.training.warmup_steps, short.training.lr_decay_steps) == (9, 10)
    kept = spec.with_overrides({"training.steps": 10, "training.warmup_steps": 2})
    assert kept.training.warmup_steps == 2
    with pytest.raises(SpecError, match="no such section"):
        spec.with_overrides({"trainig.steps": 1})
    with pytest.raises(SpecError, match="no such field"):
        spec.with_overrides({"training.stepz": 1})
    with pytest.raises(SpecError) as info:
        spec.with_overrides({"optimizer.name": "adamw", "optimizer.alpha": 0.5})
    assert any("optimizer.alpha" in p.field for p in info.value.problems)


def test_set_items_parse_as_yaml_values() -> None:
    assert parse_overrides(["training.steps=20", "optimizer.name=adamw", "x.y=[1, 2]"]) == {
        "training.steps": 20,
        "optimizer.name": "adamw",
        "x.y": [1, 2],
    }
    assert parse_override("a.b=true") == ("a.b", True)
    assert parse_override("data.files=") == ("data.files", "")
    with pytest.raises(SpecError, match="FIELD=VALUE"):
        parse_override("no-equals")
