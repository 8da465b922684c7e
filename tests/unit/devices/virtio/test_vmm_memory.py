"""The devices on the VMM's real guest memory (vmm.memory: memfd, regions, MMIO hole):
the queue's views, blk I/O and balloon page return work on it as on the test fake."""
from __future__ import annotations

import array
import struct

import pytest

from devices.virtio.balloon.device import BalloonDevice
from devices.virtio.block import S_OK, T_IN, T_OUT
from devices.virtio.block.device import BlockDevice
from devices.virtio.errors import ChainError
from devices.virtio.mmio import MmioTransport
from devices.virtio.ring import DESC_F_WRITE
from devices.virtio.testing import Allocator, MockDriver

memory_mod = pytest.importorskip("vmm.memory", reason="vmm.memory (the VMM's guest memory) is not in this tree")


@pytest.fixture
def ram():
    m = memory_mod.GuestMemory(32 << 20)
    yield m
    m.close()


def test_blk_roundtrip_on_vmm_memory(ram, tmp_path, interrupt, loop, queue_cls):
    img = tmp_path / "d.img"
    img.write_bytes(bytes(1 << 20))
    t = MmioTransport(BlockDevice(img), ram, interrupt, loop)
    try:
        d = MockDriver(t, ram, queue_size=16, alloc=Allocator(0x100000, 16 << 20))
        q = d.queues[0]
        h = q.add([struct.pack("<IIQ", T_OUT, 0, 4), b"v" * 4096], [1])
        d.kick(0)
        q.wait_used()
        assert q.written(h) == bytes([S_OK])
        h = q.add([struct.pack("<IIQ", T_IN, 0, 4)], [4096, 1], indirect=True)
        d.kick(0)
        q.wait_used()
        assert q.written(h) == b"v" * 4096 + bytes([S_OK])
    finally:
        t.close()


def test_buffer_outside_vmm_ram_is_dropped(ram, interrupt, loop, queue_cls):
    from devices.virtio.testing import DriverQueue
    dq = DriverQueue(ram, 8, Allocator(0x100000, 16 << 20))
    q = queue_cls(ram, 8, dq.desc, dq.avail, dq.used)
    dq.write_desc(0, ram.size + (1 << 30), 4096, DESC_F_WRITE, 0)  # beyond the end of RAM
    dq.publish(0)
    with pytest.raises(ChainError):
        q.pop()


def test_balloon_returns_vmm_memory(ram, interrupt, loop, queue_cls):
    t = MmioTransport(BalloonDevice(), ram, interrupt, loop)
    try:
        d = MockDriver(t, ram, queue_size=16, alloc=Allocator(0x100000, 8 << 20))
        base = 16 << 20
        ram.write(base, b"\x55" * (1 << 20))
        pfns = array.array("I", range(base >> 12, (base >> 12) + 256))
        d.queues[0].add([pfns.tobytes()], [])
        d.kick(0)
        loop.run_once()
        assert t.device.metrics.inflated_pages == 256
        assert ram.read(base, 4096) == bytes(4096)
    finally:
        t.close()
