"""Everything one running service holds, reachable from requests as `request.app.state.svc`."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.auth import Principal, lookup_token
from service.cluster import ClusterBackend, ClusterCapacity
from service.prom import ServiceMetrics
from service.scheduler import Scheduler
from service.settings import Settings


class TokenCache:
    """Token -> principal lookups cached for a few seconds (a status poll should not cost
    a token query every time); revocation takes effect within `ttl_s`."""

    def __init__(self, factory: sessionmaker[Session], ttl_s: float = 5.0) -> None:
        self._factory = factory
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, Principal | None]] = {}

    def get(self, token: str) -> Principal | None:
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(token)
            if hit is not None and now - hit[0] < self._ttl_s:
                return hit[1]
        principal = lookup_token(self._factory, token)
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[token] = (now, principal)
        return principal


class CapacityCache:
    """The cluster's capacity, refreshed at most every `ttl_s` seconds."""

    def __init__(self, backend: ClusterBackend | None, ttl_s: float = 5.0) -> None:
        self._backend = backend
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._value: tuple[float, ClusterCapacity] | None = None

    def get(self) -> ClusterCapacity | None:
        """The capacity, or None when there is no cluster or it cannot be reached now."""
        if self._backend is None:
            return None
        now = time.monotonic()
        with self._lock:
            if self._value is not None and now - self._value[0] < self._ttl_s:
                return self._value[1]
        try:
            cap = self._backend.capacity()
        except Exception:
            return None
        with self._lock:
            self._value = (now, cap)
        return cap


@dataclass
class ServiceState:
    """The service's long-lived objects."""

    settings: Settings
    engine: Engine
    factory: sessionmaker[Session]
    backend: ClusterBackend | None
    scheduler: Scheduler | None
    metrics: ServiceMetrics
    tokens: TokenCache
    capacity: CapacityCache
    public_url: str


async def get_state(request: Request) -> ServiceState:
    """The ServiceState of the app serving `request` (async: no thread hop to fetch it)."""
    return request.app.state.svc
