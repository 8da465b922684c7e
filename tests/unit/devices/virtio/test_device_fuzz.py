"""Hostile requests against the block and vsock devices (hypothesis): whatever the guest
puts in a well-formed chain, the device answers or drops it and never raises."""
from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from devices.virtio.block.device import BlockDevice
from devices.virtio.device import Activated
from devices.virtio.queue_py import SplitQueue
from devices.virtio.testing import Allocator, DriverQueue, EventLoop, FakeGuestMemory
from devices.virtio.vsock.device import VsockDevice
from devices.virtio.vsock.packet import HDR_SIZE

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def activated(mem, nqueues, size=16):
    alloc = Allocator(0x1000, mem.size)
    dqs = [DriverQueue(mem, size, alloc) for _ in range(nqueues)]
    qs = [SplitQueue(mem, size, d.desc, d.avail, d.used, indirect=True) for d in dqs]
    failures = []
    act = Activated(mem, qs, [-1] * nqueues, EventLoop(), lambda i: None, failures.append)
    return dqs, act, failures


@pytest.fixture
def disk(tmp_path):
    p = tmp_path / "d.img"
    p.write_bytes(bytes(64 * 1024))
    dev = BlockDevice(p)
    yield dev
    dev.close()


@SETTINGS
@given(type_=st.one_of(st.sampled_from([0, 1, 4, 8, 11, 13]), st.integers(0, 2**32 - 1)),
       sector=st.one_of(st.integers(0, 200), st.integers(0, 2**64 - 1)),
       data=st.binary(max_size=1100), out=st.lists(st.integers(0, 1500), max_size=3))
def test_block_requests(disk, type_, sector, data, out):
    mem = FakeGuestMemory(1 << 20)
    (dq,), act, failures = activated(mem, 1)
    head = dq.add([struct.pack("<IIQ", type_, 0, sector) + data], out)
    disk.process(act)
    (h, n), = dq.get_used()
    assert h == head and not failures
    assert n <= max(sum(out), 0)  # never claims more than the writable space
    if n:
        assert dq.written(head)[sum(out) - 1] in (0, 1, 2)  # a status byte was written
    assert disk.fd >= 0


@pytest.fixture
def vsock(tmp_path):
    dev = VsockDevice(3, str(tmp_path / "v.sock"))
    yield dev
    dev.close()


@SETTINGS
@given(fields=st.tuples(st.sampled_from([3, 4, 2**64 - 1]), st.sampled_from([2, 3]), st.integers(0, 2**32 - 1),
                        st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 3),
                        st.integers(0, 9), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
                        st.integers(0, 2**32 - 1)),
       payload=st.binary(max_size=64), truncate=st.integers(0, HDR_SIZE + 64))
def test_vsock_packets(vsock, fields, payload, truncate):
    mem = FakeGuestMemory(1 << 20)
    (rx, tx, _ev), act, failures = activated(mem, 3)
    for _ in range(4):
        rx.add([], [HDR_SIZE + 256])
    pkt = struct.pack("<QQIIIHHIII", *fields) + payload
    tx.add([pkt[:truncate] or b"\0"], [])
    vsock.mux.process_tx(act)
    vsock.mux.process_rx(act)
    assert tx.get_used() and not failures
    for head, n in rx.get_used():
        assert n == HDR_SIZE or n == 0
    vsock.mux.close_streams()
