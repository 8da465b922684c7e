"""Virtqueue descriptor processing: compiled queue vs its pure-Python twin.

Each round the mock driver publishes a full queue of 256 three-descriptor chains
(header, 4 KiB data, status) already laid out in fake guest memory; the device side
pops every chain (walk + checks + views) and returns it as used. Run:
    .venv/bin/python -m pytest benchmarks/virtio --benchmark-only -p no:cacheprovider
"""
from __future__ import annotations

import struct

import pytest

from devices.virtio import _queue, queue_py
from devices.virtio.testing import Allocator, DriverQueue, FakeGuestMemory

SIZE = 256
IMPLS = {"cython": _queue.SplitQueue, "python": queue_py.SplitQueue}


def _setup(indirect: bool):
    mem = FakeGuestMemory(16 << 20)
    dq = DriverQueue(mem, SIZE, Allocator(0x1000, mem.size))
    per_chain = 1 if indirect else 3
    heads = [dq.add([b"h" * 16], [4096, 1], indirect=indirect) for _ in range(SIZE // per_chain)]
    return mem, dq, heads


@pytest.mark.parametrize("indirect", [False, True], ids=["direct", "indirect"])
@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_pop_add_used(benchmark, impl, indirect):
    mem, dq, heads = _setup(indirect)
    idx_off = dq.avail + 2
    count = len(heads)

    def run():
        # Re-publish the same chains by rewinding: a fresh queue each round.
        q = IMPLS[impl](mem, SIZE, dq.desc, dq.avail, dq.used, indirect=True, event_idx=True)
        mem.write(idx_off, struct.pack("<H", count))
        n = 0
        while (c := q.pop()) is not None:
            q.add_used(c.head, 4097)
            n += 1
        q.needs_notification()
        return n

    assert benchmark(run) == count
    benchmark.extra_info["chains_per_round"] = count
