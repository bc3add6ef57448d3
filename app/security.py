"""API key checks (every /v1 route; the admin key for model reloads) and the per-client rate limit, as route
dependencies."""

from __future__ import annotations

import ipaddress
import math
import secrets
import threading
import time
from collections.abc import Callable

from fastapi import Request
from pydantic import SecretStr

from app.errors import ApiError


def presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def _require_key(request: Request, expected: SecretStr, name: str, realm: str) -> None:
    """401 unless the request presents ``expected`` (``name``: what the messages call it), compared in constant
    time."""
    key = presented_key(request)
    headers = {"WWW-Authenticate": f'Bearer realm="{realm}"'}
    if key is None:
        raise ApiError(
            401, "missing_api_key", f"this route needs the {name}: send X-API-Key or Authorization: Bearer", headers
        )
    if not secrets.compare_digest(key.encode(), expected.get_secret_value().encode()):
        raise ApiError(401, "invalid_api_key", f"the {name} is not valid", headers)


def check_api_key(request: Request) -> None:
    expected = request.app.state.settings.api_key
    if expected is not None:
        _require_key(request, expected, "API key", "fmpn")


def check_admin_key(request: Request) -> None:
    """Model reloads: off (403) unless FMPN_ADMIN_API_KEY is set, then only with that key."""
    expected = request.app.state.settings.admin_api_key
    if expected is None:
        raise ApiError(403, "admin_disabled", "model reloads over HTTP are off: set FMPN_ADMIN_API_KEY to allow them")
    _require_key(request, expected, "admin key", "fmpn-admin")


class RateLimiter:
    """Token bucket per client: ``per_minute`` refill, ``burst`` capacity. At most ``max_clients`` buckets are kept
    (the least recently seen go first), so a flood of client ids cannot grow memory without end."""

    def __init__(
        self,
        per_minute: float,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 100_000,
    ):
        self.rate = per_minute / 60.0
        self.per_minute = per_minute
        self.capacity = float(burst if burst is not None else max(1, math.ceil(per_minute)))
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, last time)
        self._lock = threading.Lock()
        self._next_prune = 0.0  # past 10,000 clients, full buckets are forgotten at most once a second
        self.max_clients = max_clients

    def acquire(self, client: str) -> float:
        """0 when the request may go, else the seconds until it may."""
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.pop(client, (self.capacity, now))  # re-inserted last: least recent first
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                wait = 0.0
            else:
                self._buckets[client] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
            if len(self._buckets) > 10_000 and now >= self._next_prune:  # forget clients whose bucket has refilled
                full = [c for c, (t, ts) in self._buckets.items() if t + (now - ts) * self.rate >= self.capacity]
                for c in full:
                    del self._buckets[c]
                self._next_prune = now + 1.0  # not a scan of every client on every request
            while len(self._buckets) > self.max_clients:
                del self._buckets[next(iter(self._buckets))]
        return wait


def client_id(request: Request) -> str:
    settings = request.app.state.settings
    if settings.trust_forwarded_for:
        forwarded = request.headers.get("x-forwarded-for", "").split(",")[0].strip()
        if forwarded:
            return "ip:" + _network(forwarded)
    return "ip:" + _network(request.client.host if request.client else "unknown")


def _network(host: str) -> str:
    """An IPv6 client by its /64 (one host is given a whole /64 and picks any address in it), an IPv4-mapped one by
    its IPv4 address; anything else as it is."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def check_rate_limit(request: Request) -> None:
    limiter: RateLimiter | None = request.app.state.rate_limiter
    if limiter is None:
        return
    wait = limiter.acquire(client_id(request))
    if wait > 0:
        request.app.state.metrics.rejected.labels("rate_limited").inc()
        raise ApiError(
            429,
            "rate_limited",
            f"rate limit of {limiter.per_minute:g} requests per minute per client exceeded "
            f"(rate_limit_per_minute); retry in {math.ceil(wait)} s",
            {"Retry-After": str(max(1, math.ceil(wait)))},
        )
