"""ALTO and E inside megatron-core 0.19: optimizer table and factory, exact distributed
trust ratios, the CPU layer, and the Megatron-LM entry point.

Importable only where megatron-core is installed.  The CPU compatibility layer is
opt-in: ``cpu_compat.enable()``.

    from alto.megatron import AltoOptimizerConfig, get_megatron_optimizer, cpu_compat
    config = AltoOptimizerConfig(optimizer="alto", lr=1e-3, weight_decay=1e-4, bf16=True,
                                 use_distributed_optimizer=True, clip_grad=1.0)
    optimizer = get_megatron_optimizer(config, [ddp_model])
"""

from alto.megatron import cpu_compat
from alto.megatron.config import AltoOptimizerConfig
from alto.megatron.distrib import AltoDistributedOptimizer, EDistributedOptimizer
from alto.megatron.factory import get_megatron_optimizer
from alto.megatron.norms import ShardedNormReducer
from alto.megatron.optimizers import OPTIMIZER_TABLE, adopt

__all__ = [
    "OPTIMIZER_TABLE",
    "AltoDistributedOptimizer",
    "AltoOptimizerConfig",
    "EDistributedOptimizer",
    "ShardedNormReducer",
    "adopt",
    "cpu_compat",
    "get_megatron_optimizer",
]
