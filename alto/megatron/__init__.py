"""ALTO and E inside megatron-core: optimizer factory, exact distributed trust ratios, CPU layer.

Importable only where megatron-core is installed.  Importing it applies the
megatron bug fixes in :mod:`alto.megatron.megatron_fixes` (needed with and without
CUDA); the CPU compatibility layer is separate and opt-in: ``cpu_compat.enable()``.

    from alto.megatron import AltoOptimizerConfig, get_megatron_optimizer, cpu_compat
    config = AltoOptimizerConfig(optimizer="alto", lr=1e-3, weight_decay=1e-4, bf16=True,
                                 use_distributed_optimizer=True, clip_grad=1.0)
    optimizer = get_megatron_optimizer(config, [ddp_model])
"""

from alto.megatron import cpu_compat, megatron_fixes

megatron_fixes.apply()

from alto.megatron.config import AltoOptimizerConfig  # noqa: E402
from alto.megatron.distrib import AltoDistributedOptimizer, EDistributedOptimizer  # noqa: E402
from alto.megatron.factory import get_megatron_optimizer, install_alto, install_e  # noqa: E402
from alto.megatron.norms import ShardedNormReducer  # noqa: E402

__all__ = [
    "AltoDistributedOptimizer",
    "AltoOptimizerConfig",
    "EDistributedOptimizer",
    "ShardedNormReducer",
    "cpu_compat",
    "get_megatron_optimizer",
    "install_alto",
    "install_e",
    "megatron_fixes",
]
