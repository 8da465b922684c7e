"""Property-based fuzzing of the virtqueue with hostile descriptor tables.

A random driver writes arbitrary descriptors (addresses near and beyond the end of
memory, huge lengths, loops, stray indirect flags, random next indices) and arbitrary
avail entries. Both queue implementations must agree, every outcome must be a Chain of
in-bounds views, a ChainError or QueueCorrupt — never another exception.
"""
from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings, strategies as st

from devices.virtio import _queue, queue_py
from devices.virtio.errors import ChainError, QueueCorrupt
from devices.virtio.testing import FakeGuestMemory

MEM = 64 * 1024
SIZE = 8
DESC, AVAIL, USED, TABLE = 0x1000, 0x2000, 0x3000, 0x4000

addresses = st.one_of(st.integers(0, MEM), st.sampled_from([MEM - 1, MEM, 2**63, 2**64 - 1, TABLE]))
lengths = st.one_of(st.integers(0, 64), st.sampled_from([0, 16, 32, 4096, MEM, 2**32 - 1]))
flags = st.integers(0, 7)
nexts = st.one_of(st.integers(0, SIZE + 1), st.just(0xFFFF))
descs = st.tuples(addresses, lengths, flags, nexts)


def outcome(cls, memory_bytes, event_idx):
    mem = FakeGuestMemory(MEM)
    mem.buf[:] = memory_bytes
    q = cls(mem, SIZE, DESC, AVAIL, USED, indirect=True, event_idx=event_idx)
    results = []
    for _ in range(SIZE + 2):
        try:
            c = q.pop()
        except ChainError as e:
            results.append(("chain-error", e.head))
            continue
        except QueueCorrupt:
            results.append(("corrupt",))
            break
        if c is None:
            break
        for v in c.readable + c.writable:
            assert isinstance(v, memoryview) and v.obj is mem.buf
        results.append(("ok", c.head, [bytes(v) for v in c.readable], c.writable_len))
        q.add_used(c.head, c.writable_len)
    return results, bytes(mem.buf)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    table=st.lists(descs, min_size=SIZE, max_size=SIZE),
    indirect=st.lists(descs, min_size=0, max_size=12),
    heads=st.lists(st.integers(0, SIZE + 2), max_size=SIZE + 2),
    avail_idx=st.one_of(st.none(), st.integers(0, 0xFFFF)),
    event_idx=st.booleans(),
)
def test_hostile_chains(table, indirect, heads, avail_idx, event_idx):
    mem = bytearray(MEM)
    for i, (a, n, f, nx) in enumerate(table):
        struct.pack_into("<QIHH", mem, DESC + 16 * i, a, n, f, nx)
    for i, (a, n, f, nx) in enumerate(indirect):
        struct.pack_into("<QIHH", mem, TABLE + 16 * i, a, n, f, nx)
    for i, h in enumerate(heads[:SIZE]):
        struct.pack_into("<H", mem, AVAIL + 4 + 2 * i, h)
    struct.pack_into("<H", mem, AVAIL + 2, len(heads[:SIZE]) if avail_idx is None else avail_idx)
    a = outcome(_queue.SplitQueue, mem, event_idx)
    b = outcome(queue_py.SplitQueue, mem, event_idx)
    assert a == b
