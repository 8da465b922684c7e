"""Saved state of a virtio-balloon device: target, actual size, features, last stats and
the statistics buffer the device is holding (returned to the guest to ask for more)."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class BalloonState:
    num_pages: int
    actual_pages: int
    stats_enabled: bool
    deflate_on_oom: bool
    reporting: bool
    avail_features: int
    acked_features: int
    config_generation: int
    stats: tuple[tuple[str, int], ...]
    stats_head: int | None
