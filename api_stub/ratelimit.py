"""A per-brand rate limit on the intake: one token bucket per brand, in this process.

Each api process keeps its own buckets (docs/decisions.md, HTTP): Redis is the
broker and nothing more (SPEC §2), and a limit that needs no shared store cannot
fail when that store does. With N api processes a brand gets up to N times the
configured rate; operators size RATE_LIMIT_PER_SECOND for one process.

The bucket is taken after the token is verified and its key found live, so a
revoked or forged token cannot spend a brand's allowance.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable

from fastapi import Request

from api_stub.deps import CurrentBrand, settings_of
from api_stub.errors import ApiError

# Buckets are forgotten once full again (a full bucket is the same as a new one),
# checked when this many brands have one, so memory follows the active brands only.
PRUNE_AT = 10_000


class TokenBucket:
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = float(burst), now

    def level(self, now: float) -> float:
        return min(float(self.burst), self.tokens + max(0.0, now - self.stamp) * self.rate)

    def take(self, now: float) -> float:
        """Take one token: 0.0 when granted, else the seconds until one will be there."""
        self.tokens, self.stamp = self.level(now), max(now, self.stamp)
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimiter:
    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[uuid.UUID, TokenBucket] = {}
        self._lock = threading.Lock()

    def check(self, brand_id: uuid.UUID) -> float:
        """Count one request of the brand: 0.0 if allowed, else seconds to wait."""
        with self._lock:
            now = self.clock()
            bucket = self._buckets.get(brand_id)
            if bucket is None:
                if len(self._buckets) >= PRUNE_AT:
                    self._prune(now)
                bucket = self._buckets[brand_id] = TokenBucket(self.rate, self.burst, now)
            return bucket.take(now)

    def _prune(self, now: float) -> None:
        for brand_id in [k for k, b in self._buckets.items() if b.level(now) >= b.burst]:
            del self._buckets[brand_id]


_create_lock = threading.Lock()


def limiter_of(request: Request) -> RateLimiter:
    """The app's limiter, made from its settings on first use."""
    state = request.app.state
    limiter: RateLimiter | None = getattr(state, "rate_limiter", None)
    if limiter is None:
        with _create_lock:
            limiter = getattr(state, "rate_limiter", None)
            if limiter is None:
                settings = settings_of(request)
                limiter = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
                state.rate_limiter = limiter
    return limiter


async def rate_limit(request: Request, who: CurrentBrand) -> None:
    """FastAPI dependency of the intake's routes: 429 with Retry-After over the limit."""
    wait = limiter_of(request).check(who.brand_id)
    if wait > 0:
        seconds = max(1, math.ceil(wait))
        raise ApiError(
            429,
            "rate_limited",
            f"too many requests for this brand; retry in {seconds} s",
            {"retry_after": seconds},
            headers={"Retry-After": str(seconds)},
        )
