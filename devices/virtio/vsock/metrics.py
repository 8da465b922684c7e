"""Counters of one virtio-vsock device."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class VsockMetrics:
    host_connects: int = 0
    guest_connects: int = 0
    connect_failures: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    resets_sent: int = 0
    credit_updates_sent: int = 0
    invalid_packets: int = 0
    open_streams: int = 0

    def snapshot(self) -> dict:
        return dataclasses.asdict(self)
