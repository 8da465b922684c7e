"""Counters of one virtio-blk device (read by `mm stats` and the snapshot tests)."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class BlockMetrics:
    read_count: int = 0
    read_bytes: int = 0
    write_count: int = 0
    write_bytes: int = 0
    flush_count: int = 0
    discard_count: int = 0
    write_zeroes_count: int = 0
    get_id_count: int = 0
    invalid_requests: int = 0
    io_errors: int = 0
    unsupported: int = 0
    throttled: int = 0

    def snapshot(self) -> dict:
        return dataclasses.asdict(self)
