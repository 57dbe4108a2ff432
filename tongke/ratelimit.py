"""Token-bucket rate limits per client address and per token.

Each kind of request (signalling joins, token minting, uploads, scheduler API calls,
lesson-code exchanges) has two buckets per key: one per IP address and one per token.
A bucket holds `burst` requests and refills at `per_s` a second. The defaults are sized
so that normal use never meets them (docs/security.md):

- one 1+N lesson: 1 master, up to 30 points and a few dozen viewers sharing one link,
  all reconnecting at once after the server restarts;
- a county's agents (up to 600 classrooms, possibly behind one county NAT address)
  reconnecting after an outage with the agents' jittered back-off;

while a script hammering one token or one address is slowed to the refill rate.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from tongke.tokens import request_token


@dataclass(frozen=True)
class Rate:
    burst: float
    per_s: float


DEFAULT_RATES: dict[str, Rate] = {
    "join_ip": Rate(burst=1200, per_s=60),
    "join_token": Rate(burst=120, per_s=4),
    "mint_ip": Rate(burst=600, per_s=20),
    "mint_token": Rate(burst=600, per_s=20),
    "exchange_ip": Rate(burst=600, per_s=20),
    "upload_ip": Rate(burst=2000, per_s=100),
    "upload_token": Rate(burst=1000, per_s=50),
    "scheduler_ip": Rate(burst=1200, per_s=60),
    "scheduler_token": Rate(burst=600, per_s=30),
}
# Beyond this many remembered keys, full buckets (idle clients) are forgotten.
MAX_KEYS = 50_000


class RateLimits:
    def __init__(
        self,
        rates: Mapping[str, Rate] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rates = {**DEFAULT_RATES, **(rates or {})}
        self._clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}
        self.refused: dict[str, int] = {}

    def retry_after(self, kind: str, key: str) -> float | None:
        """Take one request from `kind`'s bucket for `key`; None, or seconds to wait."""
        rate = self.rates.get(kind)
        if rate is None or rate.per_s <= 0:
            return None
        now = self._clock()
        level, last = self._buckets.get((kind, key), (rate.burst, now))
        level = min(rate.burst, level + (now - last) * rate.per_s)
        if level < 1:
            self._buckets[(kind, key)] = (level, now)
            self.refused[kind] = self.refused.get(kind, 0) + 1
            return (1 - level) / rate.per_s
        self._buckets[(kind, key)] = (level - 1, now)
        if len(self._buckets) > MAX_KEYS:
            self._forget_idle(now)
        return None

    def check(self, kind: str, *, ip: str | None, token: str | None) -> float | None:
        """Both buckets of `kind` for this request; None when it may go ahead."""
        waits = []
        if ip:
            waits.append(self.retry_after(f"{kind}_ip", ip))
        if token:
            waits.append(self.retry_after(f"{kind}_token", token_key(token)))
        refused = [w for w in waits if w is not None]
        return max(refused) if refused else None

    def _forget_idle(self, now: float) -> None:
        for (kind, key), (level, last) in list(self._buckets.items()):
            rate = self.rates[kind]
            if level + (now - last) * rate.per_s >= rate.burst:
                del self._buckets[(kind, key)]


def token_key(token: str) -> str:
    """Buckets are keyed by a digest so that no token is kept in memory longer than needed."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()[:24]


def rates_from_config(raw: Mapping[str, object]) -> dict[str, Rate]:
    """`{"join_ip": [burst, per_s], ...}` from the config file; unknown kinds are refused."""
    rates = {}
    for kind, value in raw.items():
        if kind not in DEFAULT_RATES:
            raise ValueError(f"unknown rate limit {kind!r}; known: {', '.join(DEFAULT_RATES)}")
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise ValueError(f"rate limit {kind} must be [burst, per_second]")
        rates[kind] = Rate(burst=float(value[0]), per_s=float(value[1]))
    return rates


def classify(request: web.Request) -> str | None:
    """Which limit an HTTP request counts against, if any."""
    path, method = request.path, request.method
    if method == "POST" and (path.endswith("/tokens") or path.endswith("/token")):
        return "mint"
    if path.startswith("/api/lesson/"):
        return "exchange"
    if path.startswith("/api/recordings/"):
        return "upload"
    if path.startswith(("/api/schedule/", "/api/feeds/")):
        return "scheduler"
    return None


RATE_LIMITS = web.AppKey("rate_limits", RateLimits)


def too_many(retry_s: float) -> web.Response:
    wait = max(1, int(retry_s + 0.999))
    return web.json_response(
        {
            "error": {
                "code": "rate_limited",
                "message": f"too many requests; try again in {wait} s",
                "retry_after_s": wait,
            }
        },
        status=429,
        headers={"Retry-After": str(wait)},
    )


@web.middleware
async def rate_limit_middleware(
    request: web.Request, handler: Callable[[web.Request], object]
) -> web.StreamResponse:
    kind = classify(request)
    if kind is not None:
        wait = request.app[RATE_LIMITS].check(kind, ip=request.remote, token=request_token(request))
        if wait is not None:
            return too_many(wait)
    return await handler(request)  # type: ignore[misc]
