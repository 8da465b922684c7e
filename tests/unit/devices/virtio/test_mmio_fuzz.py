"""Hostile register traffic (hypothesis): random reads and writes of any size at any
offset never raise, and the status register only ever holds states the table allows."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from devices.virtio.constants import Reg, Status
from devices.virtio.device import VirtioDevice
from devices.virtio.constants import DeviceType
from devices.virtio.mmio import MmioTransport
from devices.virtio.testing import EventLoop, FakeGuestMemory, FakeInterrupt

offsets = st.one_of(st.sampled_from([int(r) for r in Reg]), st.integers(0, 0x1000))
values = st.one_of(st.integers(0, 15), st.sampled_from([0x8F, 0x4F, 1 << 31]), st.integers(0, 2**32 - 1))
ops = st.lists(st.tuples(st.booleans(), offsets, st.sampled_from([1, 2, 4, 8]), values), max_size=60)


class Sink(VirtioDevice):
    device_type = DeviceType.RNG
    queue_max_sizes = (8, 8)

    def config_space(self):
        return bytes(8)

    def process_queue(self, index):
        self.drain(index, lambda c: c.writable_len)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops)
def test_register_fuzz(ops):
    mem = FakeGuestMemory(64 * 1024)
    loop = EventLoop()
    t = MmioTransport(Sink(), mem, FakeInterrupt(), loop)
    try:
        for is_write, off, size, value in ops:
            if is_write:
                t.write(off, size, value & ((1 << (8 * size)) - 1))
            else:
                assert 0 <= t.read(off, size) < 1 << (8 * size)
            loop.run_once()
            s = Status(t.status & ~(Status.DEVICE_NEEDS_RESET | Status.FAILED))
            if s & Status.DRIVER_OK:
                assert s & Status.FEATURES_OK and s & Status.DRIVER and s & Status.ACKNOWLEDGE
            if t.device.active is not None:
                assert t.status & Status.DRIVER_OK
    finally:
        t.close()
