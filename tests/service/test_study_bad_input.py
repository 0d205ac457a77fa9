"""Bad study requests: each gets a 422 whose error names the field (its loc), the value
and what is allowed, on the dry run and on submission alike, and stores nothing."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from service.db.tables import JobRow, StudyRow

ROOT = Path(__file__).resolve().parents[2]
BASE_SPEC = yaml.safe_load((ROOT / "configs" / "tiny-moe-cpu.yaml").read_text())


def body() -> dict:
    return {
        "spec": copy.deepcopy(BASE_SPEC),
        "arms": [
            {
                "name": "alto",
                "optimizer": {"name": "alto"},
                "search": {"lr": {"low": 2e-3, "high": 2e-1}},
            },
            {
                "name": "adamw",
                "optimizer": {"name": "adamw"},
                "search": {"lr": {"low": 2e-4, "high": 2e-2}},
            },
        ],
        "batch_sizes": [16, 32],
        "budget": {"steps": 8},
        "tuning": {"trials": 3},
        "seeds": [1, 2],
        "baseline": "adamw",
    }


def _search(arm: int, **ranges: dict):
    def change(b: dict) -> None:
        b["arms"][arm]["search"].update(ranges)

    return change


def _set(**fields: object):
    def change(b: dict) -> None:
        b.update(fields)

    return change


def _rename(arm: int, name: str):
    def change(b: dict) -> None:
        b["arms"][arm]["name"] = name

    return change


def _no_lr(b: dict) -> None:
    b["arms"][1]["search"] = {"weight_decay": {"low": 0.01, "high": 0.1}}


# (what is wrong, the change, the error's loc, words its msg must hold)
CASES = [
    (
        "empty range",
        _search(1, lr={"low": 1e-3, "high": 1e-3}),
        ["body", "arms", 1, "search", "lr"],
        ["low must be < high", "low=0.001", "high=0.001", "empty or inverted"],
    ),
    (
        "inverted range",
        _search(1, lr={"low": 1e-2, "high": 1e-3}),
        ["body", "arms", 1, "search", "lr"],
        ["low must be < high", "low=0.01", "high=0.001"],
    ),
    (
        "lr of zero (linear)",
        _search(0, lr={"low": 0.0, "high": 1e-2, "scale": "linear"}),
        ["body", "arms", 0, "search", "lr"],
        ["learning rates must be > 0", "got 0.0"],
    ),
    (
        "negative lr (linear)",
        _search(1, lr={"low": -1e-3, "high": 1e-3, "scale": "linear"}),
        ["body", "arms", 1, "search", "lr"],
        ["learning rates must be > 0", "got -0.001"],
    ),
    (
        "negative lr in a grid",
        lambda b: (
            b.update(tuning={"method": "grid"}),
            b["arms"][0]["search"].update(lr={"values": [1e-3, 1e-2]}),
            b["arms"][1]["search"].update(lr={"values": [-1e-3, 1e-3], "scale": "linear"}),
        ),
        ["body", "arms", 1, "search", "lr"],
        ["learning rates must be > 0", "got -0.001"],
    ),
    (
        "log range through zero",
        _search(1, weight_decay={"low": 0.0, "high": 0.1}),
        ["body", "arms", 1, "search", "weight_decay"],
        ["log-scale range needs low > 0", "low=0.0", "scale: linear"],
    ),
    (
        "log grid with a non-positive value",
        lambda b: (
            b.update(tuning={"method": "grid"}),
            b["arms"][0]["search"].update(lr={"values": [1e-3, 1e-2]}),
            b["arms"][1]["search"].update(lr={"values": [0.0, 1e-3]}),
        ),
        ["body", "arms", 1, "search", "lr"],
        ["log-scale dimension needs values > 0", "got 0.0"],
    ),
    (
        "batch size not divisible",
        _set(batch_sizes=[32, 24]),
        ["body", "batch_sizes", 1],
        ["batch size 24", "not a multiple of", "8 * 2 = 16"],
    ),
    (
        "duplicate arm names",
        lambda b: (_rename(1, "alto")(b), b.update(baseline="alto")),
        ["body", "arms", 1, "name"],
        ["'alto'", "already the name of arms.0", "must be distinct"],
    ),
    (
        "duplicate batch sizes",
        _set(batch_sizes=[16, 32, 16]),
        ["body", "batch_sizes"],
        ["batch sizes must be distinct", "[16, 32, 16]"],
    ),
    (
        "batch size zero",
        _set(batch_sizes=[0, 16]),
        ["body", "batch_sizes"],
        ["every batch size must be >= 1", "got 0"],
    ),
    (
        "baseline not an arm",
        _set(baseline="sgd"),
        ["body", "baseline"],
        ["'sgd'", "not one of the arms", "['alto', 'adamw']"],
    ),
    (
        "trials over the cap",
        _set(tuning={"trials": 65}),
        ["body", "tuning", "trials"],
        ["less than or equal to 64", "got 65"],
    ),
    (
        "seeds over the cap",
        _set(seeds=list(range(17))),
        ["body", "seeds"],
        ["at most 16 items", "not 17"],
    ),
    (
        "duplicate seeds",
        _set(seeds=[1, 1]),
        ["body", "seeds"],
        ["seeds must be distinct", "[1, 1]"],
    ),
    (
        "a field adamw does not have",
        _search(1, beta3={"low": 0.1, "high": 0.9, "scale": "linear"}),
        ["body", "arms", 1, "search", "beta3"],
        ["adamw optimizer has no numeric field 'beta3'", "searchable: lr, beta1, beta2"],
    ),
    (
        "a non-numeric field",
        _search(0, name={"low": 0.1, "high": 0.9}),
        ["body", "arms", 0, "search", "name"],
        ["alto optimizer has no numeric field 'name'", "searchable: lr"],
    ),
    (
        "a range outside what the optimizer accepts",
        _search(1, beta1={"low": 0.5, "high": 1.5, "scale": "linear"}),
        ["body", "arms", 1, "search", "beta1"],
        ["1.5 is not a valid adamw beta1", "less than 1"],
    ),
    (
        "no lr searched",
        _no_lr,
        ["body", "arms", 1, "search"],
        ["search must include lr", "got weight_decay"],
    ),
    (
        "grid method with a range",
        _set(tuning={"method": "grid"}),
        ["body", "arms", 0, "search", "lr"],
        ["tuning.method grid needs values", "lr gives a range", "low=0.002", "high=0.2"],
    ),
    (
        "values with sobol",
        _search(1, lr={"values": [1e-3, 1e-2]}),
        ["body", "arms", 1, "search", "lr"],
        ["explicit values [0.001, 0.01] need tuning.method grid", "method is sobol"],
    ),
    (
        "a grid over the trial cap",
        lambda b: (
            b.update(tuning={"method": "grid"}),
            b["arms"][0]["search"].update(lr={"values": [1e-3, 1e-2]}),
            b["arms"][1]["search"].update(
                lr={"values": [1e-4 * (i + 1) for i in range(9)]},
                weight_decay={"values": [0.01 * (i + 1) for i in range(8)]},
            ),
        ),
        ["body", "arms", 1, "search"],
        ["grid has 72 points", "at most 64 trials"],
    ),
    (
        "values and a range at once",
        _search(1, lr={"low": 1e-3, "high": 1e-2, "values": [1e-3]}),
        ["body", "arms", 1, "search", "lr"],
        ["either low/high (a range) or values (a grid), not both"],
    ),
    (
        "one arm",
        lambda b: b.update(arms=b["arms"][1:]),
        ["body", "arms"],
        ["at least 2 items", "not 1"],
    ),
    (
        "both budgets",
        _set(budget={"steps": 8, "tokens": 4096}),
        ["body", "budget"],
        ["exactly one of steps or tokens"],
    ),
    (
        "an unknown field",
        _set(trails=3),
        ["body", "trails"],
        ["Extra inputs are not permitted"],
    ),
]


@pytest.mark.parametrize(
    ("change", "loc", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_study_names_field_value_and_rule(svc, change, loc, words):
    b = body()
    change(b)
    for path in ("/v1/studies/plan", "/v1/studies"):
        r = svc.client.post(path, json=b, headers=svc.alice)
        assert r.status_code == 422, (path, r.text)
        got = r.json()
        assert "Traceback" not in r.text
        errors = [e for e in got["errors"] if e["loc"] == loc]
        assert errors, (loc, got["errors"])
        for word in words:
            assert word in errors[0]["msg"], (word, errors[0]["msg"])
        # the message names the field too (dotted, as the CLI prints it)
        dotted = ".".join(str(p) for p in loc[1:])
        assert f"{dotted}: " in got["message"], got["message"]
    with svc.app.state.svc.factory() as s:
        assert s.scalar(select(func.count()).select_from(StudyRow)) == 0
        assert s.scalar(select(func.count()).select_from(JobRow)) == 0


def test_every_problem_at_once(svc):
    b = body()
    b["arms"][1]["name"] = "alto"
    b["batch_sizes"] = [24, 16, 40]
    b["arms"][0]["search"]["lr"] = {"values": [1e-3, 1e-2]}
    r = svc.client.post("/v1/studies", json=b, headers=svc.alice)
    assert r.status_code == 422
    locs = [e["loc"] for e in r.json()["errors"]]
    assert ["body", "arms", 1, "name"] in locs
    assert ["body", "baseline"] in locs  # adamw is no longer an arm
    assert ["body", "arms", 0, "search", "lr"] in locs
    # located in the request as sent (the service sorts the batch sizes)
    assert ["body", "batch_sizes", 0] in locs and ["body", "batch_sizes", 2] in locs
    assert "request is invalid (5 problem(s))" in r.json()["message"]


def test_a_spec_problem_of_the_base_spec_is_located_under_spec(svc):
    b = body()
    b["spec"]["model"]["hidden_size"] = 130  # 4 heads do not divide it
    r = svc.client.post("/v1/studies/plan", json=b, headers=svc.alice)
    assert r.status_code == 422
    assert ["body", "spec", "model", "hidden_size"] in [e["loc"] for e in r.json()["errors"]]


def test_not_json_and_not_a_mapping(svc):
    h = {**svc.alice, "Content-Type": "application/json"}
    r = svc.client.post("/v1/studies", content=b"{nope", headers=h)
    assert r.status_code == 400 and "not valid JSON" in r.json()["message"]
    r = svc.client.post("/v1/studies/plan", content=b"[1, 2]", headers=h)
    assert r.status_code == 422
