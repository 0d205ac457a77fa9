"""The CPU compatibility layer: each patch does its one job and nothing else.

The end-to-end proof (DDP + DistributedOptimizer GPT steps with 2 gloo processes)
is in test_megatron_distributed.py; these tests pin the individual patches in-process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("megatron.core")

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only layer")

from alto.megatron import cpu_compat  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def enabled() -> None:
    assert cpu_compat.enable() is True


def test_enable_is_idempotent() -> None:
    import megatron.core.optimizer.optimizer as mopt

    proxy = mopt.torch
    patched_type = torch.Tensor.type
    assert cpu_compat.enable() is True
    assert cpu_compat.is_enabled()
    assert mopt.torch is proxy, "a second enable() must not wrap the proxy again"
    assert torch.Tensor.type is patched_type


def test_current_device_is_cpu_and_cuda_noops() -> None:
    assert torch.cuda.current_device() == torch.device("cpu")
    x = torch.ones(2, device=torch.cuda.current_device())
    assert x.device.type == "cpu"
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        pass
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    torch.cuda.nvtx.range_push("x")
    torch.cuda.nvtx.range_pop()
    x.record_stream(stream)
    # is_available is NOT faked: code that branches on it keeps taking the CPU branch
    assert torch.cuda.is_available() is False


def test_cuda_allocations_go_to_cpu_only_in_listed_modules() -> None:
    import megatron.core.optimizer.clip_grads as clip
    import megatron.core.optimizer.optimizer as mopt

    buf = mopt.torch.tensor([0.0], dtype=torch.float, device="cuda")
    assert buf.device.type == "cpu"
    assert clip.torch.zeros(1, device=torch.device("cuda")).device.type == "cpu"
    assert clip.torch.Tensor is torch.Tensor  # everything else is the real torch
    with pytest.raises((RuntimeError, AssertionError)):
        torch.zeros(1, device="cuda")  # the real torch is untouched


def test_tensor_type_spelled_cuda_only_for_megatron_optimizer_modules() -> None:
    param = torch.nn.Parameter(torch.zeros(2))
    half = torch.zeros(2, dtype=torch.bfloat16)
    assert param.type() == "torch.FloatTensor"  # callers outside megatron see torch's answer
    scope = {"__name__": "megatron.core.optimizer.distrib_optimizer", "p": param, "h": half}
    scope["torch"] = torch
    exec("out = (p.type(), h.type(), p.type(torch.float64).dtype)", scope)
    # the conversion form keeps its meaning
    assert scope["out"] == ("torch.cuda.FloatTensor", "torch.cuda.BFloat16Tensor", torch.float64)


@pytest.mark.parametrize(
    "module",
    [
        "megatron.core.optimizer.distrib_optimizer",
        "megatron.core.models.common.language_module.language_module",  # PP + tied embeddings
    ],
)
def test_tensor_cuda_keeps_cpu_tensors_only_for_listed_modules(module: str) -> None:
    t = torch.zeros(2)
    scope = {"__name__": module, "t": t}
    exec("out = t.cuda()", scope)
    assert scope["out"] is t
    with pytest.raises((RuntimeError, AssertionError)):
        t.cuda()  # every other caller gets torch's answer


def test_rng_tracker_forks_the_cpu_generator() -> None:
    from megatron.core.tensor_parallel import random as tp_random

    tp_random.initialize_rng_tracker(force_reset=True)
    tracker = tp_random.get_cuda_rng_tracker()
    tracker.add("model-parallel-rng", 77)
    torch.manual_seed(5)
    with tracker.fork():
        inside = torch.rand(3)
    after = torch.rand(3)
    torch.manual_seed(5)
    plain = torch.rand(3)
    torch.manual_seed(77)
    seeded = torch.rand(3)
    assert torch.equal(inside, seeded), "the fork must draw from the tracked (seed 77) state"
    assert torch.equal(after, plain), "leaving the fork must restore the default stream"


def test_te_general_gemm_name_exists_without_transformer_engine() -> None:
    """megatron-core 0.16.1 left this name unbound without TE (NameError in every MoE
    router); 0.19 binds it to None itself, so the fix we carried is gone: this pins it."""
    from megatron.core.transformer.moe import moe_utils

    assert moe_utils.te_general_gemm is None or callable(moe_utils.te_general_gemm)
    w = torch.randn(4, 8, requires_grad=True)
    x = torch.randn(3, 8, requires_grad=True)
    out = moe_utils.router_gating_linear(x, w, None, torch.float32)
    out.sum().backward()
    assert torch.allclose(out, x @ w.t())


def test_enable_does_nothing_when_cuda_is_present() -> None:
    code = textwrap.dedent(
        """
        import torch
        torch.cuda.is_available = lambda: True
        before = (torch.cuda.current_device, torch.Tensor.type)
        from alto.megatron import cpu_compat
        import megatron.core.optimizer.optimizer as mopt
        assert cpu_compat.enable() is False
        assert not cpu_compat.is_enabled()
        assert (torch.cuda.current_device, torch.Tensor.type) == before
        assert mopt.torch is torch
        print("untouched")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "untouched" in out.stdout


def test_alltoall_split_sizes_reach_the_host_as_numpy() -> None:
    import numpy as np
    from megatron.core.transformer.moe import token_dispatcher

    splits = torch.tensor([3, 5])
    host = token_dispatcher.maybe_move_tensor_to_cpu(splits, as_numpy=True)
    assert isinstance(host, np.ndarray) and host.tolist() == [3, 5]
    assert token_dispatcher.maybe_move_tensor_to_cpu(splits) is splits
