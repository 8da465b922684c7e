"""Saved state of the virtio-mmio transport (registers and queue positions).

Frozen dataclasses of plain ints/tuples, so the snapshot code can serialise them
(dataclasses.asdict / JSON) and compare them.
"""
from __future__ import annotations

import dataclasses

from .ring import QueueState


@dataclasses.dataclass(frozen=True)
class TransportState:
    status: int
    acked_features: int
    driver_features: int
    device_features_sel: int
    driver_features_sel: int
    queue_sel: int
    interrupt_status: int
    config_generation: int
    queues: tuple[QueueState, ...]

    @classmethod
    def from_dict(cls, d: dict) -> "TransportState":
        return cls(**{**d, "queues": tuple(QueueState(**q) for q in d["queues"])})
