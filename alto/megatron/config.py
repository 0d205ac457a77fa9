"""``AltoOptimizerConfig``: megatron's ``OptimizerConfig`` plus ``optimizer="alto"`` and ``"e"``.

Why a subclass and not a separate object: every megatron wrapper (FP32Optimizer,
Float16OptimizerWithFloat16Params, DistributedOptimizer, ChainedOptimizer) reads its
clipping, precision and sharding settings from one ``OptimizerConfig``; keeping
ALTO's hyperparameters on the same object means one config drives the whole stack,
exactly as ``adam`` does.
"""

from __future__ import annotations

import dataclasses

from megatron.core.optimizer.optimizer_config import OptimizerConfig

from alto import defaults as D

OPTIMIZERS: tuple[str, ...] = ("adam", "sgd", "alto", "e")
TRUST_RATIO_FORMS: tuple[str, ...] = D.TRUST_RATIO_FORMS


@dataclasses.dataclass
class AltoOptimizerConfig(OptimizerConfig):
    """OptimizerConfig with ``optimizer`` in {"adam", "sgd", "alto", "e"} and ALTO's
    and E's hyperparameters.

    "adam" and "sgd" are megatron's own optimizers, built by megatron's factory
    unchanged ("adam" is AdamW when ``decoupled_weight_decay`` is True, megatron's
    default).  "alto" uses ``lr``, ``weight_decay`` (times each group's ``wd_mult``,
    so megatron's no-decay groups for biases and norms take ALTO's plain step) and
    the ``alto_*`` fields below.  "e" is the paper's E adaptor around megatron's
    "adam" (the same ``adam_*``, ``weight_decay`` and ``decoupled_weight_decay``),
    with the ``e_*`` fields below; it shards, checkpoints and runs in bf16 like
    "adam", with one more fp32 buffer per parameter.

    The defaults are the paper's large-batch setting (global batch >= 1K);
    ``alto.paper_defaults(global_batch_size)`` gives the small-batch one.
    Gradient clipping (``clip_grad``), loss scaling and found-inf skipping stay
    megatron's: ALTO itself clips nothing and checks nothing inside megatron.
    """

    # Defaults and bounds: alto.defaults (one module for the optimizers, this
    # config and the job spec; tests/alto/test_hyperparams.py pins them together).

    alto_alpha: float = D.ALTO.alpha
    """Acceleration factor alpha; |alpha| < 1/(1 - alto_beta1)."""

    alto_beta1: float = D.ALTO.b1
    """EMA factor of the gradient difference (b1)."""

    alto_beta2: float = D.ALTO.b2
    """First-moment EMA factor (b2)."""

    alto_beta3: float = D.ALTO.b3
    """Second-moment EMA factor (b3)."""

    alto_eps: float = D.ALTO.eps
    """Added to sqrt(v_hat)."""

    alto_trust_ratio: str = D.ALTO.trust_ratio
    """"published" (||theta||/||r||, the authors' code) or "paper" (with safeguards)."""

    alto_trust_ratio_eps: tuple[float, float] = D.ALTO.trust_ratio_eps
    """(eps2, eps3) of the paper's trust-ratio form."""

    alto_foreach: bool | None = None
    """None: the fastest path for the tensors (fused, CPU-blocked or foreach);
    True: torch's multi-tensor ops; False: single-tensor step."""

    alto_fused: bool | None = None
    """None: fused Triton step when all parameters are on CUDA and triton loads."""

    e_alpha: float = D.E.alpha
    """E's acceleration factor alpha; |alpha| < 1/(1 - e_beta)."""

    e_beta: float = D.E.b1
    """E's EMA factor of the gradient difference."""

    e_base: str = "adam"
    """The optimizer E wraps: "adam" (megatron's ``adam_*`` fields; AdamW when
    ``decoupled_weight_decay``), or one of "torch_adam", "torch_adamw", "sgd",
    "rmsprop", "adagrad", "nadam", "radam" (torch's, configured by ``e_base_kwargs``;
    not sharded)."""

    e_base_kwargs: dict | None = None
    """Keyword arguments of a non-Adam ``e_base`` (lr and weight_decay are the config's)."""

    def __post_init__(self) -> None:
        self._check_name()
        if self.optimizer in ("alto", "e"):
            self._check_alto_compatible()
        super().__post_init__()
        self._check_values()

    def validate(self) -> None:
        """Every check of the constructor again, for fields assigned after it ran
        (``alto.megatron.get_megatron_optimizer`` calls it)."""
        self._check_name()
        if self.optimizer in ("alto", "e"):
            self._check_alto_compatible()
        self._check_values()

    def _check_name(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"AltoOptimizerConfig.optimizer={self.optimizer!r} is not supported; "
                f"allowed: {', '.join(repr(o) for o in OPTIMIZERS)}"
            )

    def _check_values(self) -> None:
        if self.optimizer == "e":
            self._check_e()
        if self.optimizer != "alto":
            return
        if not self.decoupled_weight_decay:
            raise ValueError(
                "AltoOptimizerConfig.decoupled_weight_decay=False is not supported with "
                "optimizer='alto': ALTO has one weight-decay form, the paper's (wd * theta "
                "added to the update r before the trust ratio), and cannot add it to the "
                "gradient as Adam does; allowed: True (or optimizer='e' with e_base='adam', "
                "whose base is Adam when decoupled_weight_decay=False)"
            )
        for name in ("alto_beta1", "alto_beta2", "alto_beta3"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and D.EMA.contains(value)):
                raise ValueError(f"AltoOptimizerConfig.{name}={value!r} must be {D.EMA.describe()}")
        if not D.alpha_allowed(self.alto_alpha, self.alto_beta1):
            raise ValueError(
                f"AltoOptimizerConfig.alto_alpha={self.alto_alpha!r} must satisfy "
                f"|alpha| < 1/(1 - alto_beta1) = {D.alpha_bound(self.alto_beta1):g}"
            )
        if not D.POSITIVE.contains(self.alto_eps):
            raise ValueError(
                f"AltoOptimizerConfig.alto_eps={self.alto_eps!r} must be {D.POSITIVE.describe()}"
            )
        if self.alto_trust_ratio not in TRUST_RATIO_FORMS:
            raise ValueError(
                f"AltoOptimizerConfig.alto_trust_ratio={self.alto_trust_ratio!r} is not "
                f"supported; allowed: {', '.join(repr(f) for f in TRUST_RATIO_FORMS)}"
            )
        if self.lr is None or not D.NON_NEGATIVE.contains(self.lr):
            raise ValueError(f"AltoOptimizerConfig.lr={self.lr!r} must be a number >= 0")
        if not D.NON_NEGATIVE.contains(self.weight_decay):
            raise ValueError(f"AltoOptimizerConfig.weight_decay={self.weight_decay!r} must be >= 0")

    def _check_e(self) -> None:
        if not (isinstance(self.e_beta, int | float) and D.EMA.contains(self.e_beta)):
            raise ValueError(
                f"AltoOptimizerConfig.e_beta={self.e_beta!r} must be {D.EMA.describe()}"
            )
        if not D.alpha_allowed(self.e_alpha, self.e_beta):
            raise ValueError(
                f"AltoOptimizerConfig.e_alpha={self.e_alpha!r} must satisfy "
                f"|alpha| < 1/(1 - e_beta) = {D.alpha_bound(self.e_beta):g}"
            )
        from alto.megatron.optimizers import E_BASES

        allowed = ("adam", *E_BASES)
        if self.e_base not in allowed:
            raise ValueError(
                f"AltoOptimizerConfig.e_base={self.e_base!r} is not supported; "
                f"allowed: {', '.join(map(repr, allowed))}"
            )
        if self.e_base != "adam" and (self.use_distributed_optimizer or self.fp16):
            field = "use_distributed_optimizer" if self.use_distributed_optimizer else "fp16"
            raise ValueError(
                f"AltoOptimizerConfig.{field}=True is not supported with e_base="
                f"{self.e_base!r} (megatron's sharded and fp16 paths checkpoint and scale "
                "only Adam-family state); allowed: False, or e_base='adam'"
            )

    def _check_alto_compatible(self) -> None:
        unsupported = {
            "optimizer_cpu_offload": self.optimizer_cpu_offload,
            "use_precision_aware_optimizer": self.use_precision_aware_optimizer,
            "optimizer_cuda_graph": self.optimizer_cuda_graph,
        }
        for name, value in unsupported.items():
            if value:
                raise ValueError(
                    f"AltoOptimizerConfig.{name}={value!r} is not supported with "
                    f"optimizer={self.optimizer!r} (megatron then builds a Transformer Engine "
                    "precision-aware / CPU-offload Adam, or captures the step in a CUDA graph, "
                    "none of which ALTO or E can replace); allowed: False"
                )

    @property
    def alto_betas(self) -> tuple[float, float, float]:
        """(b1, b2, b3) as ALTO takes them."""
        return (self.alto_beta1, self.alto_beta2, self.alto_beta3)
