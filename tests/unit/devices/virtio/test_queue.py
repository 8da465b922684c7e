"""The split virtqueue (compiled and Python twin): chains, indirect, EVENT_IDX, checks."""
from __future__ import annotations

import pytest

from devices.virtio.errors import ChainError, QueueCorrupt, QueueError
from devices.virtio.ring import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE
from devices.virtio.testing import DriverQueue


def make(queue_cls, memory, alloc, size=8, **kw):
    dq = DriverQueue(memory, size, alloc)
    q = queue_cls(memory, size, dq.desc, dq.avail, dq.used, **kw)
    return dq, q


def test_empty_queue_pops_nothing(queue_cls, memory, alloc):
    _, q = make(queue_cls, memory, alloc)
    assert q.pop() is None and q.pending() == 0


def test_chain_roundtrip(queue_cls, memory, alloc):
    dq, q = make(queue_cls, memory, alloc)
    head = dq.add([b"hello", b" world"], [4, 8])
    chain = q.pop()
    assert chain.head == head
    assert chain.read() == b"hello world" and chain.readable_len == 11
    assert chain.writable_len == 12
    assert chain.write(2, b"abcdefgh") == 8
    q.add_used(chain.head, 10)
    assert dq.get_used() == [(head, 10)]
    assert dq.written(head) == b"\0\0abcdefgh\0\0"
    assert q.needs_notification()


def test_indirect_chain(queue_cls, memory, alloc):
    dq, q = make(queue_cls, memory, alloc, indirect=True)
    head = dq.add([b"req"], [3], indirect=True)
    chain = q.pop()
    assert chain.head == head and chain.read() == b"req" and chain.writable_len == 3


def test_indirect_refused_without_feature(queue_cls, memory, alloc):
    dq, q = make(queue_cls, memory, alloc, indirect=False)
    dq.add([b"req"], [3], indirect=True)
    with pytest.raises(ChainError):
        q.pop()


def test_wraparound_many_chains(queue_cls, memory, alloc):
    dq, q = make(queue_cls, memory, alloc, size=4)
    for i in range(70000 // 100):  # exercise index wrap cheaply by jumping indices
        h = dq.add([bytes([i % 256])], [1])
        c = q.pop()
        assert c.read() == bytes([i % 256])
        q.add_used(c.head, 1)
        assert dq.get_used() == [(h, 1)]


def test_u16_index_wrap(queue_cls, memory, alloc):
    dq = DriverQueue(memory, 4, alloc)
    dq.avail_idx = dq.last_used = 0xFFFE
    memory.write(dq.used + 2, (0xFFFE).to_bytes(2, "little"))
    q = queue_cls(memory, 4, dq.desc, dq.avail, dq.used, next_avail=0xFFFE, next_used=0xFFFE)
    for _ in range(4):
        h = dq.add([b"x"], [])
        c = q.pop()
        q.add_used(c.head, 0)
        assert dq.get_used() == [(h, 0)]
    assert q.next_avail == 2


def test_loop_is_detected(queue_cls, memory, alloc):
    dq, q = make(queue_cls, memory, alloc)
    buf = alloc.alloc(16)
    dq.write_desc(0, buf, 16, DESC_F_NEXT, 1)
    dq.write_desc(1, buf, 16, DESC_F_NEXT, 0)
    dq.publish(0)
    with pytest.raises(ChainError) as e:
        q.pop()
    assert e.value.head == 0
    assert q.pop() is None  # the bad chain was consumed


def test_next_out_of_range(queue_cls, memory, alloc):
    dq, q = make(queue_cls, memory, alloc)
    dq.write_desc(0, 0x2000, 16, DESC_F_NEXT, 8)
    dq.publish(0)
    with pytest.raises(ChainError):
        q.pop()


def test_buffer_outside_memory(queue_cls, memory, alloc):
    dq, q = make(queue_cls, memory, alloc)
    dq.write_desc(0, memory.size - 8, 16, 0, 0)
    dq.publish(0)
    with pytest.raises(ChainError):
        q.pop()
    dq.write_desc(1, 2**64 - 8, 16, 0, 0)
    dq.publish(1)
    with pytest.raises(ChainError):
        q.pop()


def test_head_out_of_range(queue_cls, memory, alloc):
    dq, q = make(queue_cls, memory, alloc)
    dq.publish(9)
    with pytest.raises(ChainError):
        q.pop()


def test_readable_after_writable(queue_cls, memory, alloc):
    dq, q = make(queue_cls, memory, alloc)
    dq.write_desc(0, 0x2000, 4, DESC_F_WRITE | DESC_F_NEXT, 1)
    dq.write_desc(1, 0x3000, 4, 0, 0)
    dq.publish(0)
    with pytest.raises(ChainError):
        q.pop()


@pytest.mark.parametrize("length", [0, 15, 16 * 9, 16 * 100000])
def test_bad_indirect_table_length(queue_cls, memory, alloc, length):
    dq, q = make(queue_cls, memory, alloc, indirect=True)
    dq.write_desc(0, 0x2000, length, DESC_F_INDIRECT, 0)
    dq.publish(0)
    with pytest.raises(ChainError):
        q.pop()


def test_nested_indirect(queue_cls, memory, alloc):
    dq, q = make(queue_cls, memory, alloc, indirect=True)
    table = alloc.alloc(32)
    memory.write(table, (0x2000).to_bytes(8, "little") + (32).to_bytes(4, "little") + DESC_F_INDIRECT.to_bytes(2, "little") + b"\0\0")
    dq.write_desc(0, table, 16, DESC_F_INDIRECT, 0)
    dq.publish(0)
    with pytest.raises(ChainError):
        q.pop()


def test_indirect_not_at_head(queue_cls, memory, alloc):
    dq, q = make(queue_cls, memory, alloc, indirect=True)
    dq.write_desc(0, 0x2000, 4, DESC_F_NEXT, 1)
    dq.write_desc(1, 0x3000, 16, DESC_F_INDIRECT, 0)
    dq.publish(0)
    with pytest.raises(ChainError):
        q.pop()


def test_avail_idx_jump_corrupts_queue(queue_cls, memory, alloc):
    dq, q = make(queue_cls, memory, alloc)
    memory.write(dq.avail + 2, (100).to_bytes(2, "little"))
    with pytest.raises(QueueCorrupt):
        q.pop()


@pytest.mark.parametrize("size,desc", [(3, 0x1000), (0, 0x1000), (65536, 0x1000), (8, 0x1008), (8, 2**40)])
def test_bad_layout(queue_cls, memory, size, desc):
    with pytest.raises(QueueCorrupt):
        queue_cls(memory, size, desc, 0x8000, 0x9000)


def test_add_used_checks_head(queue_cls, memory, alloc):
    _, q = make(queue_cls, memory, alloc)
    with pytest.raises(QueueError):
        q.add_used(8, 0)


def test_event_idx_suppression(queue_cls, memory, alloc):
    dq, q = make(queue_cls, memory, alloc, event_idx=True)
    dq.set_used_event(1)  # driver wants an interrupt once used idx passes 1
    for expect in (False, True, False):
        dq.add([b"x"], [])
        c = q.pop()
        q.add_used(c.head, 0)
        assert q.needs_notification() is expect
    # avail_event tracks what we consumed
    assert int.from_bytes(memory.read(dq.used + 4 + 8 * 8, 2), "little") == 3


def test_no_interrupt_flag(queue_cls, memory, alloc):
    dq, q = make(queue_cls, memory, alloc)
    dq.set_avail_flags(1)
    dq.add([b"x"], [])
    q.add_used(q.pop().head, 0)
    assert not q.needs_notification()


def test_state_roundtrip(queue_cls, memory, alloc):
    dq, q = make(queue_cls, memory, alloc)
    dq.add([b"x"], [])
    q.add_used(q.pop().head, 0)
    s = q.state()
    q2 = queue_cls(memory, s.size, s.desc_addr, s.avail_addr, s.used_addr, next_avail=s.next_avail,
                   next_used=s.next_used, num_added=s.num_added)
    assert q2.state() == s


def test_undo_pop(queue_cls, memory, alloc):
    dq, q = make(queue_cls, memory, alloc, event_idx=True)
    heads = [dq.add([bytes([i])], []) for i in range(3)]
    assert [q.pop().head for _ in range(3)] == heads
    q.undo_pop(2)
    assert q.next_avail == 1 and q.pending() == 2
    assert int.from_bytes(memory.read(dq.used + 4 + 8 * 8, 2), "little") == 1  # avail_event follows
    assert q.pop().read() == bytes([1])


def test_char_format_views_accepted(queue_cls, memory, alloc):
    class CharViews:
        size = memory.size

        def view(self, gpa, length):
            return memory.view(gpa, length).cast("c")

    dq = DriverQueue(memory, 8, alloc)
    q = queue_cls(CharViews(), 8, dq.desc, dq.avail, dq.used, indirect=True)
    dq.add([b"abc"], [2], indirect=True)
    assert q.pop().read() == b"abc"
