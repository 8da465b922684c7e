"""Saved state of a virtio-rng device (features and its optional rate limiter)."""
from __future__ import annotations

import dataclasses

from ...ratelimiter import RateLimiterState


@dataclasses.dataclass(frozen=True)
class RngState:
    avail_features: int
    acked_features: int
    config_generation: int
    rate_limiter: RateLimiterState | None
