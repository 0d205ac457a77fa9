"""What every section of the spec shares: strict parsing, and the constants the
rules and the engine both need."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

BYTE_VOCAB_SIZE = 257
"""256 byte values plus one end-of-document token."""

LARGE_BATCH_THRESHOLD = 1024
"""The paper switches ALTO's alpha/beta1 defaults at a global batch of 1K sequences."""


class StrictModel(BaseModel):
    """Strict parsing and no unknown keys: a typo in a spec must fail, not be ignored."""

    model_config = ConfigDict(strict=True, extra="forbid", validate_default=True)
