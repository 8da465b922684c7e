"""virtio-blk through the mock driver: a real image file, read/write/flush/id/discard."""
from __future__ import annotations

import dataclasses
import os
import time
import struct

import pytest

from devices.ratelimiter import BucketConfig, RateLimiter
from devices.virtio.block import (
    F_RO, S_IOERR, S_OK, S_UNSUPP, T_DISCARD, T_FLUSH, T_GET_ID, T_IN, T_OUT, T_WRITE_ZEROES, BlockError,
)
from devices.virtio.block.device import BlockDevice
from devices.virtio.block.persist import BlockState
from devices.virtio.constants import bit
from devices.virtio.mmio import MmioTransport
from devices.virtio.testing import MockDriver


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "disk.img"
    p.write_bytes(bytes(range(256)) * 4 * 1024)  # 1 MiB, 2048 sectors
    return p


@pytest.fixture
def disk(image, memory, interrupt, loop, queue_cls):
    made = []

    def make(**kw):
        dev = BlockDevice(image, **kw)
        t = MmioTransport(dev, memory, interrupt, loop)
        made.append(t)
        return dev, MockDriver(t, memory, queue_size=16, alloc=getattr(make, "alloc", None))
    yield make
    for t in made:
        t.close()


def request(d, type_, sector=0, data=b"", read_len=0):
    q = d.queues[0]
    head = q.add([struct.pack("<IIQ", type_, 0, sector)] + ([data] if data else []), [read_len + 1] if read_len else [1])
    d.kick(0)
    used = q.wait_used()
    assert used[0][0] == head
    out = q.written(head)
    return out[-1], out[:-1], used[0][1]


def test_write_then_read_back(disk, image):
    dev, d = disk()
    payload = os.urandom(8192)
    status, _, used = request(d, T_OUT, 8, payload)
    assert status == S_OK and used == 1
    assert image.read_bytes()[8 * 512:8 * 512 + 8192] == payload
    status, data, used = request(d, T_IN, 8, read_len=8192)
    assert status == S_OK and data == payload and used == 8193
    assert dev.metrics.write_bytes == 8192 and dev.metrics.read_count == 1


def test_scattered_read(disk, image):
    dev, d = disk()
    q = d.queues[0]
    head = q.add([struct.pack("<IIQ", T_IN, 0, 1)], [512, 1024, 1])
    d.kick(0)
    q.wait_used()
    assert q.written(head)[:1536] == image.read_bytes()[512:2048]


def test_indirect_request(disk, image):
    _, d = disk()
    q = d.queues[0]
    head = q.add([struct.pack("<IIQ", T_IN, 0, 2)], [512, 1], indirect=True)
    d.kick(0)
    q.wait_used()
    assert q.written(head)[:512] == image.read_bytes()[1024:1536]


def test_out_of_range_and_unaligned(disk):
    _, d = disk()
    assert request(d, T_IN, 2047, read_len=1024)[0] == S_IOERR
    assert request(d, T_OUT, 0, b"x" * 100)[0] == S_IOERR
    assert request(d, T_IN, 2**63, read_len=512)[0] == S_IOERR


def test_read_only(disk, image):
    dev, d = disk(read_only=True)
    assert d.features & bit(F_RO)
    before = image.read_bytes()
    assert request(d, T_OUT, 0, b"z" * 512)[0] == S_IOERR
    assert request(d, T_IN, 0, read_len=512)[0] == S_OK
    assert image.read_bytes() == before


def test_flush_get_id_unsupported(disk):
    dev, d = disk()
    assert request(d, T_FLUSH)[0] == S_OK
    status, ident, _ = request(d, T_GET_ID, read_len=20)
    assert status == S_OK and ident.rstrip(b"\0") == b"disk.img"
    assert request(d, 99)[0] == S_UNSUPP


def test_discard_and_write_zeroes(disk, image):
    _, d = disk()
    seg = struct.pack("<QII", 4, 8, 0)
    assert request(d, T_WRITE_ZEROES, data=seg)[0] == S_OK
    assert image.read_bytes()[4 * 512:12 * 512] == bytes(8 * 512)
    assert request(d, T_DISCARD, data=struct.pack("<QII", 16, 8, 0))[0] == S_OK
    assert image.read_bytes()[16 * 512:24 * 512] == bytes(8 * 512)
    assert request(d, T_DISCARD, data=struct.pack("<QII", 2040, 16, 0))[0] == S_IOERR


def test_malformed_request_dropped(disk):
    dev, d = disk()
    q = d.queues[0]
    head = q.add([b"short"], [1])
    d.kick(0)
    assert q.wait_used() == [(head, 0)]
    assert dev.metrics.invalid_requests == 1


def test_config_space(disk):
    dev, d = disk()
    assert d.config(0, 8) == 2048
    assert d.config(12, 4) == 254
    assert d.config(20, 4) == 512


def test_several_disks(disk, tmp_path, memory, interrupt, loop):
    _, d1 = disk()
    other = tmp_path / "b.img"
    other.write_bytes(b"B" * 4096)
    t = MmioTransport(BlockDevice(other), memory, interrupt, loop)
    try:
        d2 = MockDriver(t, memory, queue_size=16, alloc=d1.alloc)
        assert request(d2, T_IN, 0, read_len=512)[1] == b"B" * 512
        assert request(d1, T_IN, 0, read_len=512)[1] != b"B" * 512
    finally:
        t.close()


def test_missing_image(tmp_path):
    with pytest.raises(BlockError):
        BlockDevice(tmp_path / "nope.img")


def test_rate_limited_ops_still_complete(disk):
    limiter = RateLimiter(ops=BucketConfig(size=2, refill_time_ms=20))
    dev, d = disk(rate_limiter=limiter)
    q = d.queues[0]
    heads = [q.add([struct.pack("<IIQ", T_IN, 0, i)], [512, 1]) for i in range(5)]
    d.kick(0)
    assert sorted(h for h, _ in q.wait_used(5)) == sorted(heads)
    assert dev.metrics.throttled >= 1


def test_save_restore_compare(disk, memory, interrupt, loop):
    dev, d = disk(rate_limiter=RateLimiter(bandwidth=BucketConfig(1 << 20, 100)))
    request(d, T_OUT, 0, b"s" * 512)
    state = dev.save()
    tstate = d.t.save()
    d.t.device.reset()
    assert BlockState(**dataclasses.asdict(state) | {"rate_limiter": state.rate_limiter}) == state
    dev2 = BlockDevice.restore(state)
    t2 = MmioTransport(dev2, memory, interrupt, loop)
    t2.restore(tstate)
    try:
        assert dev2.save() == state and t2.save() == tstate
        d.t = t2
        assert request(d, T_IN, 0, read_len=512)[1] == b"s" * 512
    finally:
        t2.close()


def test_corrupt_queue_marks_needs_reset(disk, memory):
    from devices.virtio.constants import Reg, Status
    dev, d = disk()
    memory.write(d.queues[0].avail + 2, (999).to_bytes(2, "little"))
    d.kick(0)
    for _ in range(500):
        if d.reg(Reg.STATUS) & Status.DEVICE_NEEDS_RESET:
            break
        time.sleep(0.002)
    assert d.reg(Reg.STATUS) & Status.DEVICE_NEEDS_RESET and dev.active is None


def test_reset_while_busy_then_reinit(disk, memory):
    dev, d = disk()
    q = d.queues[0]
    for i in range(5):
        q.add([struct.pack("<IIQ", T_IN, 0, i)], [512, 1])
    d.kick(0)
    d.set(0x70, 0)  # driver resets with requests in flight
    assert dev.active is None
    d2 = MockDriver(d.t, memory, queue_size=16, alloc=d.alloc)
    assert request(d2, T_IN, 0, read_len=512)[0] == S_OK


def test_linux_layout_is_served_by_the_c_path(disk, image, queue_cls, monkeypatch):
    """Header, data and status in separate buffers (what Linux sends): with the compiled
    queue none of it reaches request.execute; results are the same either way."""
    from devices.virtio import _queue

    if queue_cls is _queue.SplitQueue:
        def python_path(*_):
            raise AssertionError("a plain request took the Python path")
        monkeypatch.setattr("devices.virtio.block.device.execute", python_path)
    dev, d = disk()
    q = d.queues[0]
    payload = os.urandom(12288)
    head = q.add([struct.pack("<IIQ", T_OUT, 0, 16), payload[:4096], payload[4096:]], [1])
    d.kick(0)
    assert q.wait_used() == [(head, 1)] and q.written(head) == bytes([S_OK])
    head = q.add([struct.pack("<IIQ", T_IN, 0, 16)], [8192, 4096, 1], indirect=True)
    d.kick(0)
    assert q.wait_used() == [(head, 12289)]
    assert q.written(head) == payload + bytes([S_OK])
    head = q.add([struct.pack("<IIQ", T_IN, 0, 2047)], [1024, 1])  # past the end
    d.kick(0)
    assert q.wait_used() == [(head, 1)] and q.written(head)[-1] == S_IOERR
    head = q.add([struct.pack("<IIQ", T_FLUSH, 0, 0)], [1])
    d.kick(0)
    assert q.wait_used() == [(head, 1)]
    m = dev.metrics
    assert (m.write_count, m.read_count, m.flush_count, m.io_errors) == (1, 1, 1, 1)
    assert (m.write_bytes, m.read_bytes) == (12288, 12288)
    assert image.read_bytes()[16 * 512:16 * 512 + 12288] == payload


def test_buffer_outside_guest_ram_is_dropped_not_served(disk, memory):
    """A data descriptor beyond guest RAM: the C path leaves the chain alone and the
    Python path drops it as malformed (nothing read into or written from host memory)."""
    from devices.virtio.ring import DESC_F_NEXT, DESC_F_WRITE

    dev, d = disk()
    q = d.queues[0]
    hdr, status = d.alloc.alloc(16), d.alloc.alloc(1)
    memory.write(hdr, struct.pack("<IIQ", T_IN, 0, 0))
    q.write_desc(0, hdr, 16, DESC_F_NEXT, 1)
    q.write_desc(1, memory.size - 512, 4096, DESC_F_WRITE | DESC_F_NEXT, 2)
    q.write_desc(2, status, 1, DESC_F_WRITE, 0)
    q.free = [i for i in q.free if i > 2]
    q.chains[0] = ([0, 1, 2], [])
    q.publish(0)
    d.kick(0)
    assert q.wait_used() == [(0, 0)]
    assert dev.metrics.invalid_requests == 1 and dev.metrics.read_count == 0
