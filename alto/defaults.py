"""The paper's hyperparameters as a function of the global batch size."""

from __future__ import annotations

from typing import Any

#: Below this global batch size the paper uses its small-batch setting.
LARGE_BATCH = 1024


def paper_defaults(global_batch_size: int) -> dict[str, Any]:
    """ALTO keyword arguments the paper recommends for ``global_batch_size``.

    batch < 1K: alpha = 0.5, b1 = 0.01; batch >= 1K: alpha = -5, b1 = 0.99; always
    b2 = 0.9, b3 = 0.99, eps = 1e-6, weight_decay = 1e-4. The learning rate is
    task-specific and not included. Use as ``ALTO(params, lr=..., **paper_defaults(4096))``.
    """
    if isinstance(global_batch_size, bool) or not isinstance(global_batch_size, int):
        raise TypeError(
            f"global_batch_size must be a positive int, got {type(global_batch_size).__name__} "
            f"{global_batch_size!r}"
        )
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
    if global_batch_size < LARGE_BATCH:
        alpha, b1 = 0.5, 0.01
    else:
        alpha, b1 = -5.0, 0.99
    return {
        "alpha": alpha,
        "betas": (b1, 0.9, 0.99),
        "eps": 1e-6,
        "weight_decay": 1e-4,
    }
