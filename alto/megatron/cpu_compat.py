"""Run megatron-core 0.19 on a CPU-only torch build (gloo), by explicit opt-in.

Usage (call once per process, BEFORE building megatron models or optimizers; it is
cheap and idempotent, and does nothing at all when CUDA is available)::

    from alto.megatron import cpu_compat
    cpu_compat.enable()            # True: patches active; False: CUDA present, nothing done
    torch.distributed.init_process_group("gloo")
    parallel_state.initialize_model_parallel(...)
    # build the model with TransformerConfig(use_cpu_initialization=True, ...)

Why this module exists: megatron-core assumes CUDA in a handful of places that the
CPU training path goes through.  Each patch below is the smallest change that lets
that path run, and each only replaces behaviour that would otherwise *raise* on a
CUDA-less build, so nothing that already works changes meaning:

1. ``torch.cuda`` functions that raise without CUDA (``current_device``,
   ``synchronize``, ``Stream``/``stream``/``current_stream``/``Event``, NVTX ranges)
   get CPU stand-ins: ``current_device()`` returns ``torch.device("cpu")`` (megatron
   uses it as an allocation device in ~175 places), the rest become no-ops, because
   on CPU every op is already synchronous and in order.  (The alltoall MoE token
   dispatcher and megatron's timers are the users of streams/events.)
2. Literal ``device="cuda"`` allocations (found-inf / scale buffers of the
   mixed-precision optimizers, grad scalers, grad clipping, causal masks, data
   broadcast, token counters of the pipeline schedules, the rerun state machine,
   checkpoint verification): the ``torch`` global of exactly those megatron modules
   (``_DEVICE_REWRITE_MODULES``) is replaced by a proxy whose tensor factories map
   a CUDA device to CPU.  Everything else on the proxy is the real ``torch``.
3. ``param.type() == "torch.cuda.FloatTensor"`` checks decide which parameters the
   optimizer wrappers accept as fp32 / fp16 / bf16; on CPU every parameter would be
   rejected.  ``Tensor.type()`` (no arguments) returns the CUDA spelling for CPU
   tensors only when called from megatron's optimizer modules
   (``_CUDA_TYPE_NAME_MODULES``); every other caller sees torch's answer.
   ``Tensor.cuda()`` likewise returns the CPU tensor itself when called from
   megatron's DistributedOptimizer module (``_CUDA_MOVE_MODULES``: its
   ``fully_reshardable`` / ``dp_zero_gather_scatter`` checkpoint gathers move shards
   with ``.cuda()``; new in use on 0.19, where those formats keep ALTO's state) or
   from its language module (with pipeline parallelism and tied embeddings, the last
   stage's copy of the word embeddings is moved with ``.cuda()`` before the all-reduce
   that makes it the first stage's).
4. The tensor-parallel RNG tracker (``tensor_parallel/random.py``) stores and forks
   the CUDA generator; without CUDA megatron's setter silently does nothing, so
   "model-parallel" RNG forks would not fork.  In that module only, the CUDA RNG
   get/set/seed functions are mapped to the CPU default generator, and the tracker's
   "CPU RNG state changed within GPU RNG context" warning (now always true by
   construction) is filtered.
5. The alltoall MoE token dispatcher moves its split sizes "to the host as numpy"
   through ``moe_utils.maybe_move_tensor_to_cpu``, which converts only CUDA tensors;
   on CPU the splits stay tensors, which ``all_to_all_single`` rejects.  The
   dispatcher module's reference to that helper is replaced by one that also turns
   CPU tensors into numpy when ``as_numpy=True`` (megatron's GPU behaviour).

Re-checked on megatron-core 0.19.2 (docs/megatron.md, "CPU"): all five are still
needed.  What 0.19 no longer needs: the
``moe_utils.te_general_gemm`` NameError without Transformer Engine (fixed upstream:
the name is bound to None) and the ``device="cuda"`` rewrite of ``moe_utils`` (it
allocates none any more).

Not patched (out of the CPU path; they fail loudly if reached): CUDA graphs,
Transformer Engine / apex kernels, NCCL user buffers, megatron FSDP, fused
kernels (``moe_permute_fusion``, ``gradient_accumulation_fusion``, masked softmax
fusion, bias-activation fusion: keep these off in TransformerConfig on CPU).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import types
from collections.abc import Callable
from typing import Any

import torch

_ENABLED = False

#: megatron modules whose literal ``device="cuda"`` allocations are mapped to CPU.
_DEVICE_REWRITE_MODULES: tuple[str, ...] = (
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.grad_scaler",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.utils",
    "megatron.core.transformer.utils",
    "megatron.core.tensor_parallel.data",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.rerun_state_machine",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver",
)

#: megatron modules whose ``tensor.type()`` string checks must see CUDA type names.
_CUDA_TYPE_NAME_MODULES: frozenset[str] = frozenset(
    {
        "megatron.core.optimizer.optimizer",
        "megatron.core.optimizer.distrib_optimizer",
        "megatron.core.optimizer.clip_grads",
    }
)

#: megatron modules whose ``tensor.cuda()`` calls keep CPU tensors where they are.
_CUDA_MOVE_MODULES: frozenset[str] = frozenset(
    {
        "megatron.core.optimizer.distrib_optimizer",
        # pipeline parallelism with tied embeddings: the last stage's copy of the word
        # embeddings is moved with .cuda() before the first/last-stage all-reduce
        "megatron.core.models.common.language_module.language_module",
    }
)

_RNG_MODULE = "megatron.core.tensor_parallel.random"
_DISPATCHER_MODULE = "megatron.core.transformer.moe.token_dispatcher"
_RNG_WARNING = "CPU RNG state changed within GPU RNG context"

_FACTORIES: tuple[str, ...] = (
    "tensor",
    "zeros",
    "ones",
    "empty",
    "full",
    "arange",
    "zeros_like",
    "ones_like",
    "empty_like",
    "full_like",
    "randn",
    "rand",
)


def is_enabled() -> bool:
    """Whether :func:`enable` has applied the CPU patches in this process."""
    return _ENABLED


def enable() -> bool:
    """Apply the CPU compatibility patches if CUDA is absent; idempotent.

    Returns True when the patches are active after the call, False when CUDA is
    available (then nothing is changed).
    """
    global _ENABLED
    if torch.cuda.is_available():
        return False
    if _ENABLED:
        return True
    _patch_torch_cuda()
    for name in _DEVICE_REWRITE_MODULES:
        module = importlib.import_module(name)
        if not isinstance(module.torch, _CpuDeviceTorch):
            module.torch = _CpuDeviceTorch()
    _patch_tensor_type()
    _patch_rng_tracker()
    _patch_dispatcher_splits()
    _ENABLED = True
    return True


# ---------------------------------------------------------------- 1. torch.cuda


class _NullStream:
    """A CUDA stream stand-in: CPU work is synchronous, so waiting is a no-op."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_stream(self, stream: Any) -> None:
        pass

    def wait_event(self, event: Any) -> None:
        pass

    def record_event(self, event: Any = None) -> _NullEvent:
        return event if event is not None else _NullEvent()

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True


class _NullEvent:
    """A CUDA event stand-in; timing queries report 0 ms (no device clock on CPU)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record(self, stream: Any = None) -> None:
        pass

    def wait(self, stream: Any = None) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, end_event: Any) -> float:
        return 0.0


def _patch_torch_cuda() -> None:
    cpu = torch.device("cpu")
    cuda = torch.cuda
    cuda.current_device = lambda: cpu
    cuda.synchronize = lambda device=None: None
    cuda.Stream = _NullStream
    cuda.Event = _NullEvent
    cuda.current_stream = lambda device=None: _NullStream()
    cuda.default_stream = lambda device=None: _NullStream()
    cuda.stream = lambda stream=None: contextlib.nullcontext()
    cuda.nvtx.range_push = lambda msg: 0
    cuda.nvtx.range_pop = lambda: 0
    cuda.nvtx.range = lambda msg, *args, **kwargs: contextlib.nullcontext()
    # record_stream is a caching-allocator hint; CPU memory has no streams.
    torch.Tensor.record_stream = lambda self, stream: None


# ------------------------------------------------------------ 2. device="cuda"


def _is_cuda(device: Any) -> bool:
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, torch.device) and device.type == "cuda"


def _cpu_factory(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def factory(*args: Any, **kwargs: Any) -> torch.Tensor:
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
            kwargs.pop("pin_memory", None)
        return fn(*args, **kwargs)

    factory.__name__ = fn.__name__
    factory.__doc__ = f"torch.{fn.__name__} with a CUDA device mapped to CPU (cpu_compat)."
    return factory


class _CpuDeviceTorch(types.ModuleType):
    """The ``torch`` module, except that tensor factories allocate CUDA requests on CPU."""

    def __init__(self) -> None:
        super().__init__("torch")
        for name in _FACTORIES:
            setattr(self, name, _cpu_factory(getattr(torch, name)))

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


# ------------------------------------------------------------ 3. Tensor.type()

_ORIGINAL_TENSOR_TYPE = torch.Tensor.type


def _tensor_type(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    result = _ORIGINAL_TENSOR_TYPE(self, *args, **kwargs)
    if args or kwargs or self.device.type != "cpu":
        return result
    caller = sys._getframe(1).f_globals.get("__name__", "")
    if caller in _CUDA_TYPE_NAME_MODULES and result.startswith("torch."):
        return "torch.cuda." + result[len("torch.") :]
    return result


_ORIGINAL_TENSOR_CUDA = torch.Tensor.cuda


def _tensor_cuda(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    if self.device.type == "cpu":
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller in _CUDA_MOVE_MODULES:
            return self
    return _ORIGINAL_TENSOR_CUDA(self, *args, **kwargs)


def _patch_tensor_type() -> None:
    torch.Tensor.type = _tensor_type
    torch.Tensor.cuda = _tensor_cuda


# ------------------------------------------------------------------- 4. RNG


class _CpuRngCuda(types.ModuleType):
    """``torch.cuda`` as seen by megatron's RNG tracker: its generator is the CPU one."""

    def __init__(self) -> None:
        super().__init__("torch.cuda")
        self.get_rng_state = lambda device="cuda": torch.get_rng_state()
        self.set_rng_state = lambda new_state, device="cuda": torch.set_rng_state(new_state)
        self.manual_seed = lambda seed: torch.manual_seed(seed)

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cuda, name)


class _RngTorch(types.ModuleType):
    def __init__(self) -> None:
        super().__init__("torch")
        self.cuda = _CpuRngCuda()

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


class _DropRngWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _RNG_WARNING not in record.getMessage()


def _patch_rng_tracker() -> None:
    random = importlib.import_module(_RNG_MODULE)
    random.torch = _RngTorch()

    def get_state(
        device: Any = "cuda", clone: bool = False, graph_safe: bool = False
    ) -> torch.Tensor:
        return torch.get_rng_state()

    def set_state(new_state: torch.Tensor, device: int = -1, graph_safe: bool = False) -> None:
        torch.set_rng_state(new_state)

    random._get_cuda_rng_state = get_state
    random._set_cuda_rng_state = set_state
    logging.getLogger(_RNG_MODULE).addFilter(_DropRngWarning())


# ------------------------------------------------------- 5. alltoall split sizes


def _patch_dispatcher_splits() -> None:
    dispatcher = importlib.import_module(_DISPATCHER_MODULE)
    original = dispatcher.maybe_move_tensor_to_cpu
    if getattr(original, "_alto_cpu_compat", False):
        return

    def maybe_move_tensor_to_cpu(
        tensor: Any, as_numpy: bool = False, record_stream: bool = False
    ) -> Any:
        if as_numpy and torch.is_tensor(tensor) and tensor.device.type == "cpu":
            return tensor.numpy()
        return original(tensor, as_numpy=as_numpy, record_stream=record_stream)

    maybe_move_tensor_to_cpu._alto_cpu_compat = True  # type: ignore[attr-defined]
    dispatcher.maybe_move_tensor_to_cpu = maybe_move_tensor_to_cpu
