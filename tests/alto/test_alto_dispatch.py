"""Which implementation runs, and that the ALTO/E classes drive alto.fused correctly.

The fused kernels themselves are the fused helper's (tests/alto/test_fused*.py);
this checks the wiring: dispatch, state placement, E's fused transform. Without
CUDA it runs the kernels in Triton's interpreter, in a subprocess because the
interpreter must be chosen before triton is imported.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from alto import ALTO, E, Lamb

SCRIPT = textwrap.dedent(
    """
    import torch
    from alto import ALTO, E

    torch.manual_seed(0)
    init = [torch.randn(5, 7), torch.randn(33), torch.randn(4)]
    grads = [[torch.randn_like(x) for x in init] for _ in range(4)]

    def run(make):
        ps = [x.clone().requires_grad_() for x in init]
        opt = make([{"params": ps[:2]}, {"params": ps[2:], "weight_decay": 0.0}])
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            opt.step()
        return opt, ps

    def worst(a, b):
        return max(float((x - y).abs().max()) for x, y in zip(a, b))

    fa, pa = run(lambda g: ALTO(g, lr=1e-2, weight_decay=0.1, fused=True))
    ra, qa = run(lambda g: ALTO(g, lr=1e-2, weight_decay=0.1, foreach=True))
    fe, pe = run(lambda g: E(torch.optim.AdamW(g, lr=1e-2), alpha=-5.0, fused=True))
    re, qe = run(lambda g: E(torch.optim.AdamW(g, lr=1e-2), alpha=-5.0, foreach=True))
    assert fa.implementation == "fused" and fe.implementation == "fused"
    assert set(fa.state[pa[0]]) == {"step", "exp_avg", "exp_avg_sq", "diff_carry"}
    assert worst(pa, qa) < 1e-5, worst(pa, qa)
    assert worst(pe, qe) < 1e-5, worst(pe, qe)
    print("OK")
    """
)


@pytest.mark.timeout(300)
@pytest.mark.skipif(
    importlib.util.find_spec("triton") is None or importlib.util.find_spec("alto.fused") is None,
    reason="needs triton and alto.fused",
)
def test_fused_path_is_driven_by_alto_and_e() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=280, env=env
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr[-3000:]


def test_cpu_dispatch_defaults() -> None:
    p = [torch.nn.Parameter(torch.ones(2))]
    assert ALTO(p).implementation == "blocked"
    assert ALTO(p, foreach=True).implementation == "foreach"
    assert ALTO(p, foreach=False).implementation == "single"
    assert ALTO(p, fused=False).implementation == "blocked"
    assert Lamb(p, foreach=False).implementation == "single"
    assert E(torch.optim.SGD(p, lr=0.1)).implementation == "blocked"
    assert E(torch.optim.SGD(p, lr=0.1), foreach=True).implementation == "foreach"


def test_every_implementation_follows_the_protocol() -> None:
    import inspect

    from alto.optim._impl_blocked import BLOCKED
    from alto.optim._impl_foreach import FOREACH
    from alto.optim._impl_single import SINGLE
    from alto.optim._protocol import NAMES, Implementation

    impls = [SINGLE, FOREACH, BLOCKED]
    if importlib.util.find_spec("triton") is not None:
        from alto.fused import FUSED

        impls.append(FUSED)
    for impl in impls:
        assert isinstance(impl, Implementation), impl
        assert impl.name in NAMES
        for method in ("moments_and_sq_norms", "apply_update", "e_transform"):
            want = inspect.signature(getattr(Implementation, method))
            got = inspect.signature(getattr(type(impl), method))
            assert list(got.parameters) == list(want.parameters), (impl.name, method)
