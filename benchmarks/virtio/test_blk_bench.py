"""virtio-blk through the mock driver, on a 64 MiB raw file in pytest's tmp dir (page cache).

* `test_blk_device_path`: the device's request path alone (pop, parse, preadv/pwritev,
  status, add_used) for 32 requests laid out once, with the compiled queue and its
  Python twin: 64 KiB reads/writes (MB/s) and 4 KiB random reads (IOPS).
* `test_blk_end_to_end`: the same 32 x 64 KiB reads published and kicked by the mock driver
  through QueueNotify → eventfd → I/O thread → interrupt, the guest side in Python.
Run:
    .venv/bin/python -m pytest benchmarks/virtio --benchmark-only -p no:cacheprovider
"""
from __future__ import annotations

import os
import random
import select
import struct

import pytest

from devices.virtio import _queue, queue_py
from devices.virtio.block import T_IN, T_OUT
from devices.virtio.block.device import BlockDevice
from devices.virtio.constants import F_EVENT_IDX, bit
from devices.virtio.device import Activated
from devices.virtio.mmio import MmioTransport
from devices.virtio.testing import Allocator, DriverQueue, EventLoop, FakeGuestMemory, FakeInterrupt, MockDriver

INFLIGHT = 32
IMPLS = {"cython": _queue.SplitQueue, "python": queue_py.SplitQueue}
CASES = {"read-64k": (T_IN, 64 * 1024, False), "write-64k": (T_OUT, 64 * 1024, False),
         "randread-4k": (T_IN, 4096, True)}


@pytest.fixture
def image(tmp_path):
    img = tmp_path / "bench.img"
    with open(img, "wb") as f:
        f.write(os.urandom(1 << 20) * 64)
    return img


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_blk_device_path(benchmark, image, impl, case):
    op, size, rand = CASES[case]
    mem = FakeGuestMemory(64 << 20)
    dq = DriverQueue(mem, 128, Allocator(0x1000, mem.size))
    rnd = random.Random(1)
    for i in range(INFLIGHT):
        sector = rnd.randrange(0, (64 << 20) // size) * (size // 512) if rand else i * (size // 512)
        hdr = struct.pack("<IIQ", op, 0, sector)
        dq.add([hdr], [size, 1], indirect=True) if op == T_IN else dq.add([hdr, b"w" * size], [1], indirect=True)
    dev = BlockDevice(image)

    def run():
        q = IMPLS[impl](mem, 128, dq.desc, dq.avail, dq.used, indirect=True)  # rewound: 32 pending again
        act = Activated(mem, [q], [-1], EventLoop(), lambda i: None, lambda e: None)
        dev.process(act)
        return q.next_used

    assert benchmark(run) == INFLIGHT
    mean = benchmark.stats.stats.mean
    benchmark.extra_info["MB_per_s"] = round(INFLIGHT * size / mean / 1e6, 1)
    benchmark.extra_info["IOPS"] = round(INFLIGHT / mean)
    dev.close()


def test_blk_end_to_end(benchmark, image):
    mem = FakeGuestMemory(64 << 20)
    irq = FakeInterrupt()
    t = MmioTransport(BlockDevice(image), mem, irq, EventLoop())
    # without EVENT_IDX every batch interrupts, so the mock can sleep on the irq eventfd
    d = MockDriver(t, mem, features=t.device.avail_features & ~bit(F_EVENT_IDX), queue_size=128)
    q = d.queues[0]
    mark = q.alloc.next

    def run():
        for i in range(INFLIGHT):
            q.add([struct.pack("<IIQ", T_IN, 0, i * 128)], [64 * 1024, 1], indirect=True)
        d.kick(0)
        done = 0
        while done < INFLIGHT:
            select.select([irq.fd], [], [], 1.0)
            try:
                os.eventfd_read(irq.fd)
            except BlockingIOError:
                pass
            done += len(q.get_used())
        q.alloc.next = mark  # reuse buffer memory each round

    benchmark(run)
    benchmark.extra_info["MB_per_s"] = round(INFLIGHT * 64 * 1024 / benchmark.stats.stats.mean / 1e6, 1)
    t.close()
