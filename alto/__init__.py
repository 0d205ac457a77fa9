"""ALTO: the E adaptor and ALTO (E applied to Lamb) as torch optimizers.

Imports only torch; the fused Triton path (``alto.fused``) and the Megatron
integration (``alto.megatron``) load lazily where they are used.
"""

from alto.defaults import paper_defaults
from alto.grouping import param_groups
from alto.optim import ALTO, E, Lamb

__all__ = ["ALTO", "E", "Lamb", "paper_defaults", "param_groups"]
