"""Saved state of a virtio-blk device: its backing file, features and rate limiter.

Restoring reopens the same file and refuses if its size changed under the snapshot.
"""
from __future__ import annotations

import dataclasses

from ...ratelimiter import RateLimiterState


@dataclasses.dataclass(frozen=True)
class BlockState:
    path: str
    read_only: bool
    disk_id: str
    capacity: int  # in 512-byte sectors
    avail_features: int
    acked_features: int
    config_generation: int
    rate_limiter: RateLimiterState | None
