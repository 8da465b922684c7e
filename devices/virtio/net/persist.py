"""Saved state of a virtio-net device. The TAP itself is reopened by name on restore."""
from __future__ import annotations

import dataclasses

from ...ratelimiter import RateLimiterState


@dataclasses.dataclass(frozen=True)
class NetState:
    tap_name: str
    mac: str
    avail_features: int
    acked_features: int
    config_generation: int
    rx_rate_limiter: RateLimiterState | None
    tx_rate_limiter: RateLimiterState | None
