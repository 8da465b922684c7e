"""virtio-balloon through the mock driver on memfd-backed memory: inflate returns pages."""
from __future__ import annotations

import array
import struct

import pytest

from devices.virtio.balloon import F_REPORTING, F_STATS_VQ
from devices.virtio.balloon.device import BalloonDevice
from devices.virtio.constants import INT_CONFIG, bit
from devices.virtio.mmio import MmioTransport
from devices.virtio.testing import FakeGuestMemory, MockDriver

PAGE = 4096
BALLOON_AREA = 8 << 20  # the "guest" gives pages from here on


@pytest.fixture
def mem():
    return FakeGuestMemory(16 << 20, memfd=True)


@pytest.fixture
def balloon(mem, interrupt, loop, queue_cls):
    t = MmioTransport(BalloonDevice(target_mib=0), mem, interrupt, loop)
    d = MockDriver(t, mem, queue_size=64)
    yield t.device, d
    t.close()


def test_queue_roles_follow_features(balloon):
    dev, d = balloon
    assert d.features & bit(F_STATS_VQ) and d.features & bit(F_REPORTING)
    assert dev.roles() == ["inflate", "deflate", "stats", "reporting"]


def test_target_is_config_change(balloon, interrupt):
    dev, d = balloon
    dev.set_target(4)
    assert d.config(0, 4) == 1024
    assert d.ack_interrupt() & INT_CONFIG
    d.t.write(0x100 + 4, 4, 1024)  # driver reports `actual`
    assert dev.actual_pages == 1024


def test_inflate_returns_memory(balloon, mem, loop):
    dev, d = balloon
    mem.write(BALLOON_AREA, b"\xab" * (256 * PAGE))  # touch 1 MiB
    before = mem.allocated()
    pfns = array.array("I", range(BALLOON_AREA // PAGE, BALLOON_AREA // PAGE + 256))
    q = d.queues[0]
    h = q.add([pfns.tobytes()], [])
    d.kick(0)
    loop.run_once()
    assert q.get_used() == [(h, 0)]
    assert dev.metrics.inflated_pages == 256
    assert before - mem.allocated() >= 250 * PAGE  # st_blocks is coarse for the ring pages
    assert mem.read(BALLOON_AREA, PAGE) == bytes(PAGE)


def test_bad_pfns_skipped(balloon, mem, loop):
    dev, d = balloon
    pfns = array.array("I", [0xFFFFFFFF, (16 << 20) // PAGE, 1000])
    d.queues[0].add([pfns.tobytes() + b"\x01"], [])
    d.kick(0)
    loop.run_once()
    assert dev.metrics.invalid_pfns == 2 and dev.metrics.inflated_pages == 1


def test_deflate_counts(balloon, loop):
    dev, d = balloon
    d.queues[1].add([array.array("I", [1, 2, 3]).tobytes()], [])
    d.kick(1)
    loop.run_once()
    assert dev.metrics.deflated_pages == 3


def test_stats_held_and_returned(balloon, loop):
    dev, d = balloon
    q = d.queues[2]
    h = q.add([struct.pack("<HQ", 4, 123456) + struct.pack("<HQ", 5, 999999) + struct.pack("<HQ", 77, 1)], [])
    d.kick(2)
    loop.run_once()
    assert dev.stats == {"free_memory": 123456, "total_memory": 999999}
    assert q.get_used() == []  # held until the host wants fresh numbers
    assert dev.request_stats()
    assert q.get_used() == [(h, 0)]


def test_free_page_reporting(balloon, mem, loop):
    dev, d = balloon
    q = d.queues[3]
    region = BALLOON_AREA + (1 << 20)
    mem.write(region, b"\xcd" * (64 * PAGE))
    from devices.virtio.ring import DESC_F_WRITE
    q.write_desc(0, region, 64 * PAGE, DESC_F_WRITE, 0)
    q.free.remove(0)
    q.publish(0)
    d.kick(3)
    loop.run_once()
    assert q.get_used() == [(0, 0)]
    assert dev.metrics.reported_bytes == 64 * PAGE
    assert mem.read(region, 16) == bytes(16)


def test_save_restore_compare(balloon, loop):
    dev, d = balloon
    dev.set_target(2)
    d.queues[2].add([struct.pack("<HQ", 4, 42)], [])
    d.kick(2)
    loop.run_once()
    state = dev.save()
    assert state.stats_head is not None
    assert BalloonDevice.restore(state).save() == state
