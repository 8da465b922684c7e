"""Counters of one virtio-rng device."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class RngMetrics:
    requests: int = 0
    bytes: int = 0
    throttled: int = 0
    failures: int = 0

    def snapshot(self) -> dict:
        return dataclasses.asdict(self)
