"""Counters of one virtio-balloon device."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class BalloonMetrics:
    inflated_pages: int = 0
    deflated_pages: int = 0
    reported_bytes: int = 0
    invalid_pfns: int = 0
    madvise_failures: int = 0
    stats_updates: int = 0

    def snapshot(self) -> dict:
        return dataclasses.asdict(self)
