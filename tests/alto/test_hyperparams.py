"""``alto.defaults`` owns every hyperparameter's default, bound and name; the
optimizers, the Megatron config and the job spec are pinned to it here.

The job spec (``alto_client``) is a separate light distribution that imports
neither torch nor ``alto``, so it keeps its own copy of the numbers; this test is
what ties that copy to ``alto.defaults``.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import subprocess
import sys
from pathlib import Path

import pytest

from alto import ALTO, E, Lamb, paper_defaults
from alto import defaults as D

DEFAULTS_FILE = Path(D.__file__)
BATCHES = [1, 2, 512, 1023, 1024, 1025, 4096, 1 << 20]


def test_the_module_is_torch_free() -> None:
    """Only the standard library: loaded on its own, it pulls in no torch."""
    tree = ast.parse(DEFAULTS_FILE.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"__future__", "math", "dataclasses", "typing"}, imported
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('hp', {str(DEFAULTS_FILE)!r})\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules['hp'] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "assert 'torch' not in sys.modules\n"
        "print(mod.paper_defaults(4096))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def _default(fn, name: str):
    return inspect.signature(fn).parameters[name].default


def test_optimizer_signatures_read_the_module() -> None:
    assert _default(ALTO, "lr") == D.ALTO.lr
    assert _default(ALTO, "betas") == (D.ALTO.b1, D.ALTO.b2, D.ALTO.b3)
    assert _default(ALTO, "alpha") == D.ALTO.alpha
    assert _default(ALTO, "eps") == D.ALTO.eps
    assert _default(ALTO, "weight_decay") == D.ALTO.weight_decay
    assert _default(ALTO, "trust_ratio") == D.ALTO.trust_ratio
    assert _default(ALTO, "trust_ratio_eps") == D.ALTO.trust_ratio_eps
    assert _default(ALTO, "on_nonfinite") == D.ALTO.on_nonfinite
    assert _default(Lamb, "betas") == (D.LAMB.b2, D.LAMB.b3)
    assert _default(Lamb, "eps") == D.LAMB.eps
    assert _default(Lamb, "weight_decay") == D.LAMB.weight_decay
    assert _default(E, "alpha") == D.E.alpha
    assert _default(E, "beta") == D.E.b1
    # the optimizer defaults are the paper's large-batch setting
    large = paper_defaults(D.LARGE_BATCH)
    assert large["alpha"] == D.ALTO.alpha and large["betas"] == D.ALTO.betas
    assert large["eps"] == D.ALTO.eps and large["weight_decay"] == D.ALTO.weight_decay


def test_optimizer_bounds_are_the_modules() -> None:
    import torch

    p = [torch.zeros(2, requires_grad=True)]
    for bad_b in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
            ALTO(p, betas=(bad_b, 0.9, 0.99), alpha=0.0)
    b1 = 0.75
    edge = D.alpha_bound(b1)
    ALTO(p, betas=(b1, 0.9, 0.99), alpha=math.nextafter(edge, 0.0))
    with pytest.raises(ValueError, match=r"\|alpha\| < 1/\(1-betas\[0\]\) = 4"):
        ALTO(p, betas=(b1, 0.9, 0.99), alpha=edge)
    with pytest.raises(ValueError, match=r"\|alpha\| < 1/\(1-beta\) = 4"):
        E(torch.optim.SGD(p, lr=0.1), alpha=-edge, beta=b1)
    with pytest.raises(ValueError, match=r"eps must be > 0"):
        Lamb(p, eps=0.0)


@pytest.mark.parametrize("batch", BATCHES)
def test_paper_defaults_by_batch(batch: int) -> None:
    alpha, b1 = D.paper_alpha_b1(batch)
    assert (alpha, b1) == ((0.5, 0.01) if batch < 1024 else (-5.0, 0.99))
    assert paper_defaults(batch)["alpha"] == alpha
    assert paper_defaults(batch)["betas"][0] == b1
    assert D.alpha_allowed(alpha, b1)


def test_megatron_config_reads_the_module() -> None:
    pytest.importorskip("megatron.core")
    from alto.megatron.config import TRUST_RATIO_FORMS, AltoOptimizerConfig

    fields = {f.name: f.default for f in dataclasses.fields(AltoOptimizerConfig)}
    assert fields["alto_alpha"] == D.ALTO.alpha
    assert (fields["alto_beta1"], fields["alto_beta2"], fields["alto_beta3"]) == D.ALTO.betas
    assert fields["alto_eps"] == D.ALTO.eps
    assert fields["alto_trust_ratio"] == D.ALTO.trust_ratio
    assert fields["alto_trust_ratio_eps"] == D.ALTO.trust_ratio_eps
    assert (fields["e_alpha"], fields["e_beta"]) == (D.E.alpha, D.E.b1)
    assert TRUST_RATIO_FORMS == D.TRUST_RATIO_FORMS
    # every megatron name in the table is a field of the config
    for h in D.HYPERPARAMETERS.values():
        for place in ("megatron", "megatron_e"):
            if place in h.names:
                assert h.names[place] in fields, (h.key, h.names[place])
    edge = D.alpha_bound(0.5)
    with pytest.raises(ValueError, match=r"alto_alpha=2.0 must satisfy"):
        AltoOptimizerConfig(optimizer="alto", lr=1e-3, alto_beta1=0.5, alto_alpha=edge)
    with pytest.raises(ValueError, match=r"alto_beta2=1.0 must be in \[0, 1\)"):
        AltoOptimizerConfig(optimizer="alto", lr=1e-3, alto_beta2=1.0)
    with pytest.raises(ValueError, match=r"e_alpha=-2.0 must satisfy"):
        AltoOptimizerConfig(optimizer="e", lr=1e-3, e_beta=0.5, e_alpha=-edge)


def _bounds(model, name: str) -> D.Bound:
    """A pydantic field's ge/gt/le/lt constraints as a Bound."""
    low = high = None
    low_open = high_open = False
    for m in model.model_fields[name].metadata:
        if getattr(m, "ge", None) is not None:
            low = m.ge
        if getattr(m, "gt", None) is not None:
            low, low_open = m.gt, True
        if getattr(m, "le", None) is not None:
            high = m.le
        if getattr(m, "lt", None) is not None:
            high, high_open = m.lt, True
    return D.Bound(low, high, low_open, high_open)


def test_client_spec_copy_is_pinned_to_the_module() -> None:
    spec = pytest.importorskip("alto_client.spec")
    assert spec.LARGE_BATCH_THRESHOLD == D.LARGE_BATCH
    for batch in BATCHES:
        assert tuple(spec.alto_paper_defaults(batch)) == D.paper_alpha_b1(batch)
    alto, e = spec.AltoSpec, spec.ESpec
    fields = alto.model_fields
    assert fields["beta2"].default == D.ALTO.b2
    assert fields["beta3"].default == D.ALTO.b3
    assert fields["eps"].default == D.ALTO.eps
    assert fields["weight_decay"].default == D.ALTO.weight_decay
    for name in ("beta1", "beta2", "beta3"):
        assert _bounds(alto, name) == D.EMA, name
    assert _bounds(e, "beta1") == D.EMA
    assert _bounds(alto, "eps") == D.POSITIVE
    assert _bounds(alto, "weight_decay") == D.NON_NEGATIVE
    # every spec name in the table is a field of AltoSpec
    for h in D.HYPERPARAMETERS.values():
        if "spec" in h.names:
            assert h.names["spec"] in fields, (h.key, h.names["spec"])
    # the alpha bound: |alpha| < 1/(1-beta1), checked across the two fields
    for name in ("alto", "e"):
        edge = D.alpha_bound(0.5)
        ok = {"name": name, "alpha": math.nextafter(edge, 0.0), "beta1": 0.5}
        spec.JobSpec.from_dict({"optimizer": ok})
        with pytest.raises(spec.SpecError, match=r"\|alpha\| must be < 1/\(1-beta1\) = 2"):
            spec.JobSpec.from_dict({"optimizer": {**ok, "alpha": edge}})


def test_every_hyperparameter_has_its_names() -> None:
    b1 = D.HYPERPARAMETERS["b1"].names
    assert b1 == {
        "alto": "betas[0]",
        "e": "beta",
        "megatron": "alto_beta1",
        "megatron_e": "e_beta",
        "spec": "beta1",
        "paper": "b1",
    }
    alto_args = set(inspect.signature(ALTO).parameters)
    e_args = set(inspect.signature(E).parameters)
    for h in D.HYPERPARAMETERS.values():
        if "alto" in h.names:
            assert h.names["alto"].split("[")[0] in alto_args, h.key
        if "e" in h.names:
            assert h.names["e"] in e_args, h.key
