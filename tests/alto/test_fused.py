"""The fused (Triton) ALTO / Lamb / E kernels against the foreach path.

On the CPU the kernels run through Triton's interpreter (``alto.fused`` picks it
for CPU tensors per call, so nothing here sets TRITON_INTERPRET for the whole
process).  The interpreter costs ~10 ms per program, so shapes are small and
ALTO_FUSED_BLOCK is set to 64: tensors of a few hundred elements still span
several chunks, with full (unmasked) chunks and ragged tails.

CUDA tests (marked ``gpu``) skip cleanly without a device; ``bench/gpu_check.sh``
runs them together with the benchmark.
"""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("triton")

from alto.fused import _layout
from alto.fused import _ops as fused
from alto.optim._impl_foreach import FOREACH as foreach

HYPER = dict(b1=0.9, b2=0.9, b3=0.999, alpha=0.5, eps=1e-6)
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


_TRITON = tuple(int(x) for x in __import__("triton").__version__.split(".")[:2])
_NUMPY = tuple(int(x) for x in __import__("numpy").__version__.split(".")[:2])


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch, request):
    """Interpreted tests: blocks of 64 so small tensors span several chunks."""
    on_cuda = request.node.get_closest_marker("gpu") is not None
    if on_cuda or "hopper" in request.node.name:
        return
    if _TRITON < (3, 9) and _NUMPY >= (2, 0):
        pytest.skip(
            f"triton {_TRITON}: its interpreter before 3.9 fails on loops with loaded bounds "
            "under numpy 2 (the compiled kernels are unaffected; the conformance suite still "
            "runs the fused path through the interpreter)"
        )
    monkeypatch.setenv("ALTO_FUSED_BLOCK", "64")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: relative to the tensor's scale, not per element."""
    a, b = a.double(), b.double()
    scale = b.abs().max().item() if b.numel() else 0.0
    diff = (a - b).abs().max().item() if b.numel() else 0.0
    return diff / scale if scale > 0 else diff


def published_ratios(sq: torch.Tensor) -> torch.Tensor:
    w, r = sq[:, 0].sqrt(), sq[:, 1].sqrt()
    return torch.where((w > 0) & (r > 0), w / r, torch.ones_like(w))


class Run:
    """One parameter group driven through phase 1 + phase 2 by an implementation."""

    def __init__(self, params, *, carry=True, state_dtype=torch.float32, device="cpu"):
        self.params = [p.detach().clone().to(device) for p in params]
        self.m = [torch.zeros_like(p, dtype=state_dtype) for p in self.params]
        self.v = [torch.zeros_like(p, dtype=state_dtype) for p in self.params]
        self.c = [torch.zeros_like(p, dtype=state_dtype) for p in self.params] if carry else None
        self.steps = [torch.zeros((), dtype=torch.float32, device=device) for _ in self.params]
        self.sqs: list[torch.Tensor] = []

    def step(self, impl, grads, *, lr=1e-2, weight_decay=0.01, grad_scale=None, hyper=HYPER):
        with_norms = weight_decay != 0.0
        ws = {"workspace": {}} if impl is not fused else {}
        sq = impl.moments_and_sq_norms(
            self.params, grads, self.m, self.v, self.c, self.steps,
            weight_decay=weight_decay, with_norms=with_norms, grad_scale=grad_scale, **hyper, **ws,
        )  # fmt: skip
        ratios = None
        if with_norms:
            self.sqs.append(sq.clone())
            ratios = published_ratios(sq)
        impl.apply_update(
            self.params, self.m, self.v, self.steps, lr=lr, b2=hyper["b2"], b3=hyper["b3"],
            eps=hyper["eps"], weight_decay=weight_decay, ratios=ratios, **ws,
        )  # fmt: skip

    def tensors(self):
        out = {"param": self.params, "exp_avg": self.m, "exp_avg_sq": self.v}
        if self.c is not None:
            out["diff_carry"] = self.c
        return out


def make(shapes, seed=0, dtype=torch.float32, n_grads=3):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    grads = [[torch.randn(s, generator=gen).to(dtype) for s in shapes] for _ in range(n_grads)]
    return params, grads


def assert_same(fused_run: Run, ref_run: Run, tol: float) -> None:
    for key, tensors in fused_run.tensors().items():
        for i, (a, b) in enumerate(zip(tensors, ref_run.tensors()[key])):
            assert a.dtype == b.dtype and a.shape == b.shape
            err = rel_err(a, b)
            assert err <= tol, f"{key}[{i}] shape {tuple(a.shape)}: rel err {err:.3g} > {tol}"
    for k, (a, b) in enumerate(zip(fused_run.sqs, ref_run.sqs)):
        assert a.shape == b.shape
        for i in range(a.shape[0]):
            err = rel_err(a[i], b[i])
            assert err <= tol, f"step {k}: squared norms of tensor {i}: rel err {err:.3g}"


SHAPES = {
    # sizes around the block (64): 1 tail, exact blocks, blocks + tail, an empty tensor
    "odd_sizes": [(3,), (64,), (65,), (2, 97), (0,), (1,), (128,)],
    "many_tiny": [((i % 5) + 1,) for i in range(40)],
    # 40 full chunks + tail; _SEGMENT_BLOCK is lowered below so the per-tensor
    # reduction loops ten times
    "one_huge": [(2600,)],
}


@pytest.mark.parametrize("case", sorted(SHAPES))
def test_alto_matches_foreach(case, monkeypatch):
    monkeypatch.setattr(fused, "_SEGMENT_BLOCK", 4)
    params, grads = make(SHAPES[case])
    a, b = Run(params), Run(params)
    for g in grads:
        a.step(fused, g)
        b.step(foreach, g)
    assert_same(a, b, tol=1e-6)
    assert all(float(s) == len(grads) for s in a.steps)


def test_plain_step_without_trust_ratio():
    params, grads = make(SHAPES["odd_sizes"], seed=1, n_grads=2)
    a, b = Run(params), Run(params)
    for g in grads:
        a.step(fused, g, weight_decay=0.0)
        b.step(foreach, g, weight_decay=0.0)
    assert not a.sqs
    assert_same(a, b, tol=1e-6)


def test_lamb_has_no_carry_and_matches_foreach():
    params, grads = make([(5,), (130,)], seed=2)
    a, b = Run(params, carry=False), Run(params, carry=False)
    for g in grads:
        a.step(fused, g, hyper=dict(HYPER, b1=0.0, alpha=0.0))
        b.step(foreach, g, hyper=dict(HYPER, b1=0.0, alpha=0.0))
    assert_same(a, b, tol=1e-6)


def test_grad_scale_and_lr_tensor():
    params, grads = make([(7,), (100,)], seed=3, n_grads=2)
    a, b, c = Run(params), Run(params), Run(params)
    scale = torch.tensor(0.25)
    for g in grads:
        a.step(fused, g, grad_scale=scale, lr=torch.tensor(3e-3))
        b.step(foreach, g, grad_scale=scale, lr=3e-3)
        c.step(fused, g, grad_scale=scale, lr=3e-3)
    assert_same(a, b, tol=1e-6)
    for x, y in zip(a.params, c.params):
        assert torch.equal(x, y), "a 0-d lr tensor must give the same bits as the float"


def test_bf16_params_with_fp32_states():
    params, grads = make([(9,), (200,)], seed=4, dtype=torch.bfloat16)
    a, b = Run(params), Run(params)
    for g in grads:
        a.step(fused, g)
        b.step(foreach, g)
    for x, y in zip(a.params, b.params):
        assert x.dtype == torch.bfloat16
        # both round one fp32 result to bf16; allow one bf16 ulp where fp32 rounding
        # differences straddle a bf16 rounding boundary
        ulp = y.float().abs().clamp_min(1e-30) * 2.0**-7
        assert ((x.float() - y.float()).abs() <= ulp).all()
    for key in ("exp_avg", "exp_avg_sq", "diff_carry"):
        for x, y in zip(a.tensors()[key], b.tensors()[key]):
            assert rel_err(x, y) <= 1e-6


def test_mixed_dtypes_in_one_group_keep_input_order():
    gen = torch.Generator().manual_seed(5)
    shapes = [(70,), (3,), (64,), (130,)]
    dtypes = [torch.float32, torch.bfloat16, torch.float32, torch.bfloat16]
    params = [torch.randn(s, generator=gen).to(d) for s, d in zip(shapes, dtypes)]
    grads = [[torch.randn(s, generator=gen).to(d) for s, d in zip(shapes, dtypes)] for _ in "ab"]
    a, b = Run(params), Run(params)
    for g in grads:
        a.step(fused, g)
        b.step(foreach, g)
    for k in range(len(grads)):
        for i in range(len(shapes)):
            assert rel_err(a.sqs[k][i], b.sqs[k][i]) <= 1e-6
    layout = _layout.get_layout(
        [p.numel() for p in a.params],
        [(p.dtype, p.dtype, torch.float32) for p in a.params],
        torch.device("cpu"),
    )
    assert len(layout.buckets) == 2 and layout.order == (0, 2, 1, 3)


def bf16_state_reference(params, grads, *, lr, weight_decay, b1, b2, b3, alpha, eps):
    """fp32 math with m, v, c rounded to bf16 after each update (what the kernel stores)."""
    p = [x.clone() for x in params]
    m = [torch.zeros_like(x) for x in p]
    v = [torch.zeros_like(x) for x in p]
    c = [torch.zeros_like(x) for x in p]

    def rnd(t):
        return t.bfloat16().float()

    for k, gs in enumerate(grads, start=1):
        rs = []
        for i, g in enumerate(gs):
            gt = g + alpha * (c[i] + (1 - b1) * g)
            c[i] = rnd(b1 * c[i] - (1 - b1) ** 2 * g)
            m[i] = rnd(b2 * m[i] + (1 - b2) * gt)
            v[i] = rnd(b3 * v[i] + (1 - b3) * gt * gt)
            rs.append(
                m[i] / (1 - b2**k) / ((v[i] / (1 - b3**k)).sqrt() + eps) + weight_decay * p[i]
            )
        for i, r in enumerate(rs):
            w, u = p[i].norm(), r.norm()
            ratio = w / u if w > 0 and u > 0 else 1.0
            p[i] = p[i] - lr * ratio * r
    return p, m, v, c


def test_bf16_state_rounds_once_with_fp32_math():
    params, grads = make([(10,), (150,)], seed=6, n_grads=4)
    a = Run(params, state_dtype=torch.bfloat16)
    for g in grads:
        a.step(fused, g)
    p_ref, m_ref, v_ref, c_ref = bf16_state_reference(
        params, grads, lr=1e-2, weight_decay=0.01, **HYPER
    )
    for x, y in zip(a.params, p_ref):
        assert rel_err(x, y) <= 1e-5
    for got, want in ((a.m, m_ref), (a.v, v_ref), (a.c, c_ref)):
        for x, y in zip(got, want):
            assert x.dtype == torch.bfloat16
            ulp = y.abs().clamp_min(1e-30) * 2.0**-7
            assert ((x.float() - y).abs() <= ulp).all()


def test_deterministic_bitwise():
    params, grads = make(SHAPES["odd_sizes"], seed=7, n_grads=2)
    a, b = Run(params), Run(params)
    for g in grads:
        a.step(fused, g)
        b.step(fused, g)
    for key, tensors in a.tensors().items():
        for x, y in zip(tensors, b.tensors()[key]):
            assert torch.equal(x, y), key
    for x, y in zip(a.sqs, b.sqs):
        assert torch.equal(x, y)


def test_plans_are_cached_and_follow_new_gradients():
    params, grads = make([(5,), (70,)], seed=8, n_grads=1)
    run = Run(params)

    def plan(g):
        lists = [run.params, g, run.m, run.v, run.c]
        return fused._plan("alto1", lists, (0, 1, 2), run.steps)

    p1 = plan(grads[0])
    assert plan(grads[0]) is p1, "same addresses: the cached plan, no new table"
    fresh = [g.clone() for g in grads[0]]
    p2 = plan(fresh)
    assert p2 is not p1 and p2.layout is p1.layout, "new grads: new table, same layout"
    assert p2.pointers.table[1].tolist() == [fresh[i].data_ptr() for i in p2.layout.order]
    # and the step reads the new gradients through it
    a, b = Run(params), Run(params)
    a.step(fused, fresh)
    b.step(foreach, fresh)
    assert_same(a, b, tol=1e-6)


def test_e_transform_in_place_and_out_of_place():
    gen = torch.Generator().manual_seed(9)
    shapes = [(3,), (64,), (150,)]
    b1, alpha = 0.9, -2.0
    carries = [torch.randn(s, generator=gen) for s in shapes]
    grads = [torch.randn(s, generator=gen) for s in shapes]
    want_out = [g + alpha * (c + (1 - b1) * g) for g, c in zip(grads, carries)]
    want_c = [b1 * c - (1 - b1) ** 2 * g for g, c in zip(grads, carries)]

    c1 = [c.clone() for c in carries]
    out = [torch.empty_like(g) for g in grads]
    fused.e_transform_(grads, c1, out, b1=b1, alpha=alpha)
    c2 = [c.clone() for c in carries]
    g2 = [g.clone() for g in grads]
    assert fused.e_transform_(g2, c2, b1=b1, alpha=alpha) is g2
    for i in range(len(shapes)):
        assert rel_err(out[i], want_out[i]) <= 1e-6
        assert rel_err(c1[i], want_c[i]) <= 1e-6
        assert torch.equal(g2[i], out[i]) and torch.equal(c2[i], c1[i])


def test_e_transform_bf16_grads_fp32_carry():
    gen = torch.Generator().manual_seed(10)
    g = [torch.randn(100, generator=gen).bfloat16()]
    c = [torch.randn(100, generator=gen)]
    want_c = 0.5 * c[0] - 0.25 * g[0].float()
    want = (g[0].float() + 1.5 * (c[0] + 0.5 * g[0].float())).bfloat16()
    out = fused.e_transform_(g, c, [torch.empty_like(g[0])], b1=0.5, alpha=1.5)
    assert rel_err(c[0], want_c) <= 1e-6
    assert (out[0].float() - want.float()).abs().max() <= want.float().abs().max() * 2.0**-7


def test_float64_falls_back_to_foreach_with_a_warning():
    params, grads = make([(6,), (80,)], seed=11, dtype=torch.float64, n_grads=2)
    a = Run(params, state_dtype=torch.float64)
    b = Run(params, state_dtype=torch.float64)
    fused._warned.clear()
    with pytest.warns(UserWarning, match="float64"):
        a.step(fused, grads[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not every step
        a.step(fused, grads[1])
    for g in grads:
        b.step(foreach, g)
    assert_same(a, b, tol=0.0)


@pytest.mark.parametrize("value", ["3", "0", "8", "abc", "131072"])
def test_block_size_env_is_validated(monkeypatch, value):
    monkeypatch.setenv("ALTO_FUSED_BLOCK", value)
    with pytest.raises(ValueError, match="ALTO_FUSED_BLOCK"):
        _layout.block_size()


def test_ratios_shape_is_checked():
    params, grads = make([(4,), (5,)], seed=12, n_grads=1)
    run = Run(params)
    run.step(fused, grads[0])
    with pytest.raises(ValueError, match=r"ratios must be a \[2\] tensor"):
        fused.apply_update(
            run.params, run.m, run.v, run.steps, lr=1e-3, b2=0.9, b3=0.99, eps=1e-6,
            weight_decay=0.01, ratios=torch.ones(3),
        )  # fmt: skip


def _model_params(seed: int, shapes) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).requires_grad_() for s in shapes]


def _set_grads(params, k: int) -> None:
    gen = torch.Generator().manual_seed(100 + k)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)


CLASS_SHAPES = [(7, 13), (13,), (130,), (64, 2)]


def test_alto_class_fused_on_cpu_interpreter_equals_foreach(monkeypatch):
    from alto import ALTO

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    pa, pb = _model_params(0, CLASS_SHAPES), _model_params(0, CLASS_SHAPES)

    def groups(ps):
        return [{"params": [ps[0], ps[3]]}, {"params": [ps[1], ps[2]], "weight_decay": 0.0}]

    kw = dict(lr=1e-2, max_grad_norm=1.0, alpha=0.5, betas=(0.9, 0.9, 0.999))
    oa = ALTO(groups(pa), fused=True, **kw)
    ob = ALTO(groups(pb), foreach=True, fused=False, **kw)
    assert oa.implementation == "fused" and ob.implementation == "foreach"
    for k in range(3):
        _set_grads(pa, k)
        _set_grads(pb, k)
        oa.step()
        ob.step()
    for x, y in zip(pa, pb):
        assert rel_err(x.detach(), y.detach()) <= 1e-6
        for key in ("exp_avg", "exp_avg_sq", "diff_carry"):
            assert rel_err(oa.state[x][key], ob.state[y][key]) <= 1e-6
        assert float(oa.state[x]["step"]) == float(ob.state[y]["step"]) == 3.0


def test_e_class_fused_on_cpu_interpreter_equals_foreach(monkeypatch):
    from alto import E

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    pa, pb = _model_params(1, CLASS_SHAPES), _model_params(1, CLASS_SHAPES)
    oa = E(torch.optim.AdamW(pa, lr=1e-2), alpha=-2.0, beta=0.9, fused=True)
    ob = E(torch.optim.AdamW(pb, lr=1e-2), alpha=-2.0, beta=0.9, fused=False)
    assert oa.implementation == "fused" and ob.implementation == "blocked"
    for k in range(3):
        _set_grads(pa, k)
        _set_grads(pb, k)
        grads = [p.grad for p in pa]
        oa.step()
        ob.step()
        assert all(p.grad is g for p, g in zip(pa, grads)), "E hands the caller's grads back"
    for x, y in zip(pa, pb):
        assert rel_err(x.detach(), y.detach()) <= 1e-6
        assert rel_err(oa.state[x]["diff_carry"], ob.state[y]["diff_carry"]) <= 1e-6


def test_fused_true_on_cpu_without_interpreter_is_refused(monkeypatch):
    from alto import ALTO

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="fused=True needs every parameter on a CUDA device"):
        ALTO(_model_params(2, [(3,)]), fused=True)
    assert ALTO(_model_params(2, [(3,)])).implementation == "blocked"


def _needs_state_dtype() -> None:
    import inspect

    from alto import ALTO

    if "state_dtype" not in inspect.signature(ALTO.__init__).parameters:
        pytest.skip("ALTO(state_dtype=...) is not wired into alto/optim yet")


def test_alto_class_bf16_state_on_cpu_interpreter(monkeypatch):
    from alto import ALTO

    _needs_state_dtype()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    params = _model_params(3, CLASS_SHAPES)
    ref = [p.detach().clone() for p in params]
    opt = ALTO(params, lr=1e-2, fused=True, state_dtype=torch.bfloat16, **HYPER_CLASS)
    grads = []
    for k in range(3):
        _set_grads(params, k)
        grads.append([p.grad.clone() for p in params])
        opt.step()
    assert all(
        opt.state[p][key].dtype == torch.bfloat16
        for p in params
        for key in ("exp_avg", "exp_avg_sq", "diff_carry")
    )
    p_ref, *_ = bf16_state_reference(ref, grads, lr=1e-2, weight_decay=1e-4, **HYPER)
    for x, y in zip(params, p_ref):
        assert rel_err(x.detach(), y) <= 1e-5
    sd = opt.state_dict()
    opt2 = ALTO(_model_params(3, CLASS_SHAPES), fused=True, state_dtype=torch.bfloat16)
    opt2.load_state_dict(sd)
    assert next(iter(opt2.state.values()))["exp_avg"].dtype == torch.bfloat16


HYPER_CLASS = dict(
    betas=(HYPER["b1"], HYPER["b2"], HYPER["b3"]), alpha=HYPER["alpha"], eps=HYPER["eps"]
)


@pytest.mark.parametrize("value", [torch.float16, "bf16"])
def test_state_dtype_is_validated(monkeypatch, value):
    from alto import ALTO

    _needs_state_dtype()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(
        ValueError, match=r"state_dtype must be None, torch\.float32 or torch\.bfloat16"
    ):
        ALTO(_model_params(4, [(3,)]), fused=True, state_dtype=value)


def test_bf16_state_needs_the_fused_path():
    from alto import ALTO

    _needs_state_dtype()
    with pytest.raises(
        ValueError, match=r"state_dtype=torch\.bfloat16 needs the fused implementation"
    ):
        ALTO(_model_params(4, [(3,)]), fused=False, state_dtype=torch.bfloat16)
    assert ALTO(_model_params(4, [(3,)]), state_dtype=torch.float32).state_dtype is None


def _compile_for_hopper(name: str, signature: dict, constexprs: dict, warps: int = 8) -> str:
    """PTX of one kernel variant, compiled for sm_90 without a GPU (ptxas ships with triton)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from alto.fused import _kernels

    fn = _kernels.get(name, interpret=False)
    sig = {**signature, **dict.fromkeys(constexprs, "constexpr")}
    attrs = {
        (fn.arg_names.index(k),): [["tt.divisibility", 16]] for k, v in sig.items() if v[0] == "*"
    }
    src = ASTSource(fn, sig, constexprs, attrs)
    options = {"num_warps": warps, "enable_fp_fusion": True}
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]


def _moments_signature() -> dict:
    sig = dict.fromkeys(("p_tab", "g_tab", "m_tab", "v_tab", "c_tab", "s_tab"), "*i64")
    sig.update(chunk_pos_ptr="*i32", chunk_start_ptr="*i64", numel_ptr="*i64")
    sig.update(norm_p_ptr="*fp32", norm_r_ptr="*fp32", scale_ptr="*fp32")
    names = "b1 one_minus_b1 carry_coef alpha b2 one_minus_b2 b3 one_minus_b3 eps weight_decay"
    return {
        **sig,
        **dict.fromkeys((*names.split(), "ln_b2_hi", "ln_b2_lo", "ln_b3_hi", "ln_b3_lo"), "fp32"),
    }


@pytest.mark.parametrize(
    ("state", "masked", "aligned", "vector_loads"),
    [
        ("fp32", False, True, 20),
        ("bf16", False, True, 14),
        ("fp32", True, True, 0),
        ("fp32", False, False, 0),
    ],
)
def test_phase1_kernel_compiles_for_hopper_with_vector_loads(state, masked, aligned, vector_loads):
    """The compiled (not interpreted) kernel builds, and full aligned chunks load 16 bytes at a time.

    4096 elements over 256 threads is 16 per thread: 4 x 16-byte loads for each fp32
    tensor (theta, g, m, v, c: 20), 2 for each bf16 state. Masked tails and
    unaligned tables fall back to scalar loads; losing the vector loads on the
    main path would cost much of the bandwidth.
    """
    import re

    import triton.language as tl

    s_dt = tl.float32 if state == "fp32" else tl.bfloat16
    consts = dict(
        P_DT=tl.float32, G_DT=tl.float32, S_DT=s_dt, HAS_CARRY=True, HAS_SCALE=False,
        WITH_NORMS=True, MASKED=masked, ALIGNED=aligned, BLOCK=4096,
    )  # fmt: skip
    ptx = _compile_for_hopper("alto_moments", _moments_signature(), consts)
    assert len(re.findall(r"ld\.global(?:\.[a-z0-9]+)*\.v4\.", ptx)) == vector_loads
    assert "__nv_exp" in ptx, "bias corrections must use the fp64 exp"


def test_update_segment_and_e_kernels_compile_for_hopper():
    import re

    import triton.language as tl

    sig = dict.fromkeys(("p_tab", "m_tab", "v_tab", "s_tab"), "*i64")
    sig.update(chunk_pos_ptr="*i32", chunk_start_ptr="*i64", numel_ptr="*i64", orig_ptr="*i32")
    sig.update(ratio_ptr="*fp32", lr="*fp32")
    sig.update(
        dict.fromkeys(
            ("eps", "weight_decay", "ln_b2_hi", "ln_b2_lo", "ln_b3_hi", "ln_b3_lo"), "fp32"
        )
    )
    consts = dict(
        P_DT=tl.bfloat16, S_DT=tl.float32, HAS_RATIO=True, LR_IS_PTR=True, MASKED=False,
        ALIGNED=True, BLOCK=4096,
    )  # fmt: skip
    ptx = _compile_for_hopper("alto_update", sig, consts)
    assert len(re.findall(r"st\.global(?:\.[a-z0-9]+)*\.v4\.", ptx)) == 2  # 16 bf16 per thread
    seg = dict(norm_p_ptr="*fp32", norm_r_ptr="*fp32", full_begin_ptr="*i32", full_end_ptr="*i32")
    seg.update(tail_slot_ptr="*i32", orig_ptr="*i32", out_ptr="*fp32")
    assert ".entry segment_sq_norms" in _compile_for_hopper(
        "segment_sq_norms", seg, dict(RB=128), 4
    )
    esig = dict.fromkeys(("g_tab", "c_tab", "o_tab"), "*i64")
    esig.update(chunk_pos_ptr="*i32", chunk_start_ptr="*i64", numel_ptr="*i64")
    esig.update(dict.fromkeys(("b1", "one_minus_b1", "carry_coef", "alpha"), "fp32"))
    consts = dict(
        G_DT=tl.float32, C_DT=tl.float32, O_DT=tl.float32, MASKED=False, ALIGNED=True, BLOCK=4096
    )
    ptx = _compile_for_hopper("e_transform", esig, consts)
    assert len(re.findall(r"st\.global(?:\.[a-z0-9]+)*\.v4\.", ptx)) == 8  # c and out


# ----------------------------------------------------------------------------- CUDA
# Run by bench/gpu_check.sh on a GPU machine; skipped cleanly elsewhere.


def gpt2_small_shapes() -> list[tuple[int, ...]]:
    vocab, ctx, d, layers = 50257, 1024, 768, 12
    shapes: list[tuple[int, ...]] = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,)]
        shapes += [(d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return [*shapes, (d,), (d,)]


def cuda_params(shapes, dtype=torch.float32, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return [
        (torch.randn(s, device="cuda", generator=gen) * 0.02).to(dtype).requires_grad_()
        for s in shapes
    ]


def feed_grads(params, step: int, dtype=None) -> None:
    gen = torch.Generator(device="cuda").manual_seed(1000 + step)
    for p in params:
        p.grad = (torch.randn(p.shape, device="cuda", generator=gen) * 1e-3).to(dtype or p.dtype)


def two_groups(params):
    return [
        {"params": [p for p in params if p.dim() > 1], "weight_decay": 1e-4},
        {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0},
    ]


def assert_rel(a_list, b_list, tol, what):
    worst = max(rel_err(a.detach(), b.detach()) for a, b in zip(a_list, b_list))
    assert worst <= tol, f"{what}: worst relative error {worst:.3g} > {tol}"


@pytest.mark.gpu
@needs_cuda
@pytest.mark.timeout(600)
def test_cuda_alto_fused_equals_foreach_50_steps_gpt2_small():
    from alto import ALTO

    shapes = gpt2_small_shapes()
    pa, pb = cuda_params(shapes), cuda_params(shapes)
    oa = ALTO(two_groups(pa), lr=1e-3, fused=True, on_nonfinite="unchecked")
    ob = ALTO(two_groups(pb), lr=1e-3, foreach=True, fused=False, on_nonfinite="unchecked")
    assert oa.implementation == "fused" and ob.implementation == "foreach"
    for k in range(50):
        feed_grads(pa, k)
        feed_grads(pb, k)
        oa.step()
        ob.step()
    assert_rel(pa, pb, 1e-6, "params")
    for key in ("exp_avg", "exp_avg_sq", "diff_carry"):
        assert_rel([oa.state[p][key] for p in pa], [ob.state[p][key] for p in pb], 1e-6, key)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.timeout(600)
def test_cuda_e_adamw_fused_equals_foreach_50_steps_gpt2_small():
    from alto import E

    shapes = gpt2_small_shapes()
    pa, pb = cuda_params(shapes), cuda_params(shapes)
    oa = E(torch.optim.AdamW(pa, lr=1e-3, fused=True), fused=True, on_nonfinite="unchecked")
    # the same (fused) base on both sides: only E's transform differs
    ob = E(torch.optim.AdamW(pb, lr=1e-3, fused=True), fused=False, on_nonfinite="unchecked")
    for k in range(50):
        feed_grads(pa, k)
        feed_grads(pb, k)
        ga = [p.grad for p in pa]
        oa.step()
        ob.step()
        assert all(p.grad is g for p, g in zip(pa, ga)), "E must hand the caller's grads back"
    assert_rel(pa, pb, 1e-6, "params")
    assert_rel(
        [oa.state[p]["diff_carry"] for p in pa], [ob.state[p]["diff_carry"] for p in pb], 1e-6, "c"
    )


@pytest.mark.gpu
@needs_cuda
def test_cuda_bf16_params_and_bf16_state():
    shapes = [(257,), (1024, 96), (5000,)]
    gen = torch.Generator(device="cuda").manual_seed(3)
    params = [torch.randn(s, device="cuda", generator=gen).bfloat16() for s in shapes]
    grads = [
        [torch.randn(s, device="cuda", generator=gen).bfloat16() for s in shapes] for _ in range(5)
    ]
    a, b = Run(params, device="cuda"), Run(params, device="cuda")
    for g in grads:
        a.step(fused, g)
        b.step(foreach, g)
    for x, y in zip(a.params, b.params):
        ulp = y.float().abs().clamp_min(1e-30) * 2.0**-7
        assert ((x.float() - y.float()).abs() <= ulp).all()
    # bf16 state: same answer as the test's fp32-math-with-rounding reference
    p32 = [p.float() for p in params]
    g32 = [[x.float() for x in gs] for gs in grads]
    c = Run(p32, state_dtype=torch.bfloat16, device="cuda")
    for g in g32:
        c.step(fused, g)
    p_ref, *_ = bf16_state_reference(p32, g32, lr=1e-2, weight_decay=0.01, **HYPER)
    for x, y in zip(c.params, p_ref):
        assert rel_err(x, y) <= 1e-5


@pytest.mark.gpu
@needs_cuda
def test_cuda_step_has_no_host_sync_and_replays_in_a_cuda_graph():
    shapes = [(3,), (4096,), (1000, 77)]
    params, grads = make(shapes, seed=13, n_grads=1)
    g = [x.cuda() for x in grads[0]]
    eager, graphed = Run(params, device="cuda"), Run(params, device="cuda")
    lr = torch.tensor(1e-2, device="cuda")

    def step(run):
        sq = fused.moments_and_sq_norms(
            run.params, g, run.m, run.v, run.c, run.steps, weight_decay=0.01,
            with_norms=True, **HYPER,
        )  # fmt: skip
        fused.apply_update(
            run.params, run.m, run.v, run.steps, lr=lr, b2=HYPER["b2"], b3=HYPER["b3"],
            eps=HYPER["eps"], weight_decay=0.01, ratios=published_ratios(sq),
        )  # fmt: skip

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step(graphed)  # warm-up: compiles kernels, caches plans and tables
        torch.cuda.set_sync_debug_mode("error")
        try:
            step(graphed)  # steady state: any host sync raises
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(graphed)
    for _ in range(3):
        graph.replay()
    for _ in range(5):
        step(eager)
    torch.cuda.synchronize()
    assert [float(s) for s in graphed.steps] == [5.0] * len(shapes)
    for key, tensors in eager.tensors().items():
        for x, y in zip(graphed.tensors()[key], tensors):
            assert torch.equal(x, y), f"graph replay differs from eager in {key}"
