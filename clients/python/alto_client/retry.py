"""When and how long to retry a call: one policy, run by tenacity for both clients.

What is retried: an idempotent call (every GET, a cancel, a delete, and a
submission, which the client makes idempotent with an ``Idempotency-Key``) when
the connection was refused or dropped, or the answer timed out or was cut, and
when a gateway answered 502/503/504 (the service restarting behind a proxy, or
the service saying it cannot reach Ray now). Nothing else: a 4xx is the
caller's problem and a 500 is a bug that repeating does not fix.

How long: ``attempts`` tries in all, with capped exponential backoff and equal
jitter (the n-th pause is uniform in [cap/2, cap], cap = min(max_backoff,
backoff * 2**(n-1))), so many clients that lost the same server do not come
back in step, and none comes back at once.

The policy is data; ``retrying()`` and ``async_retrying()`` turn it into
tenacity's runners, so the sync and async clients cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import tenacity
from tenacity.wait import wait_base

from alto_client.errors import ApiError

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


def retryable(exc: BaseException) -> bool:
    """True for a failure that repeating an idempotent call may cure."""
    if isinstance(exc, RETRY_EXCEPTIONS):
        return True
    return isinstance(exc, ApiError) and exc.status_code in RETRY_STATUSES


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts in total, and the backoff between them (seconds)."""

    attempts: int = 4
    backoff: float = 0.25
    max_backoff: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"retries: attempts must be >= 1, got {self.attempts}")
        if self.backoff < 0:
            raise ValueError(f"retries: backoff must be >= 0 seconds, got {self.backoff}")

    def wait(self) -> wait_base:
        """The pause before the next attempt: half the capped exponential, plus up to as much."""
        half, cap = self.backoff / 2, self.max_backoff / 2
        return tenacity.wait_exponential(multiplier=half, max=cap) + (
            tenacity.wait_random_exponential(multiplier=half, max=cap)
        )

    def _options(self, idempotent: bool) -> dict[str, Any]:
        return {
            "stop": tenacity.stop_after_attempt(self.attempts if idempotent else 1),
            "wait": self.wait(),
            "retry": tenacity.retry_if_exception(retryable),
            "reraise": True,  # the caller sees the last real error, not tenacity's RetryError
        }

    def retrying(self, *, idempotent: bool = True) -> tenacity.Retrying:
        """A fresh runner for one call (its ``statistics`` count that call's attempts)."""
        return tenacity.Retrying(**self._options(idempotent))

    def async_retrying(self, *, idempotent: bool = True) -> tenacity.AsyncRetrying:
        """``retrying()`` for coroutines (sleeps with asyncio)."""
        return tenacity.AsyncRetrying(**self._options(idempotent))
