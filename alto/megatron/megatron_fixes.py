"""Fixes for megatron-core 0.16.1 bugs that are not about CPU (they hit GPUs too).

Applied by :func:`apply` (idempotent), which ``import alto.megatron`` calls, so every
process that uses our megatron integration gets them, with or without CUDA.

1. ``megatron.core.transformer.moe.moe_utils`` imports ``te_general_gemm`` only inside
   ``try: import transformer_engine`` but tests ``if te_general_gemm is not None`` in
   the router's gating GEMM.  Without Transformer Engine the name is never bound and
   every MoE router forward raises ``NameError`` (seen on CPU and on an H200 image
   without TE).  We bind it to ``None``, which is exactly the value megatron's own
   ``extensions.transformer_engine`` uses for "TE GEMM unavailable", so the router
   takes its plain ``torch.mm`` path.  With TE installed the name exists and is left
   untouched.
"""

from __future__ import annotations

import importlib

_MOE_UTILS = "megatron.core.transformer.moe.moe_utils"


def apply() -> None:
    """Apply every fix in this module (safe to call any number of times)."""
    moe_utils = importlib.import_module(_MOE_UTILS)
    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None
