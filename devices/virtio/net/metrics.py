"""Counters of one virtio-net device."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class NetMetrics:
    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    tx_malformed: int = 0
    rx_truncated: int = 0
    rx_bad_buffers: int = 0
    tap_errors: int = 0
    rx_throttled: int = 0
    tx_throttled: int = 0

    def snapshot(self) -> dict:
        return dataclasses.asdict(self)
