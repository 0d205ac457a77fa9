"""When and how long to retry a request.

Kept free of I/O so the sync and async clients share one policy: an idempotent
call (every GET, a cancel, and a submission that carries an Idempotency-Key) is
retried on a dropped or refused connection and on 502/503/504, with capped
exponential backoff and full jitter so many clients do not retry in step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import httpx

RETRY_STATUSES = frozenset({502, 503, 504})

# Errors where the request may not have reached the server, or the answer was
# lost: safe to repeat for an idempotent call. A timeout while reading is in the
# list too: the call is idempotent, so repeating it cannot do harm.
RETRY_EXCEPTIONS: tuple[type[BaseException], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadError,
    httpx.ReadTimeout,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    httpx.PoolTimeout,
)


@dataclass
class RetryPolicy:
    """How many attempts in total, and the backoff between them (seconds)."""

    attempts: int = 4
    backoff: float = 0.25
    max_backoff: float = 5.0
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"retries: attempts must be >= 1, got {self.attempts}")
        if self.backoff < 0:
            raise ValueError(f"retries: backoff must be >= 0 seconds, got {self.backoff}")

    def delay(self, attempt: int) -> float:
        """Pause before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        cap = min(self.max_backoff, self.backoff * (2 ** (attempt - 1)))
        return self.rng.uniform(cap / 2, cap)

    def should_retry_exception(self, exc: BaseException, attempt: int) -> bool:
        return attempt < self.attempts and isinstance(exc, RETRY_EXCEPTIONS)

    def should_retry_status(self, status: int, attempt: int) -> bool:
        return attempt < self.attempts and status in RETRY_STATUSES


NO_RETRY = RetryPolicy(attempts=1)
