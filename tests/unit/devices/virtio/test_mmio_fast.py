"""The virtio-mmio registers served in C (MmioFastPath) and their sync with the transport:
the Python side and the C handler see one ISR value, in registers, saved state and
restore; accesses the C side does not serve are passed back (rc 1); any access sequence
(hypothesis) gives the same register values and kicks as the Python registers alone."""
from __future__ import annotations

import os
import threading

import pytest
from hypothesis import given, settings, strategies as st

from devices.virtio import _mmio
from devices.virtio.constants import INT_CONFIG, INT_VRING, DeviceType, Reg
from devices.virtio.device import VirtioDevice
from devices.virtio.mmio import MmioTransport
from devices.virtio.persist import TransportState

SERVED, PASSED = 0, 1


class TwoQueues(VirtioDevice):
    device_type = DeviceType.RNG
    queue_max_sizes = (16, 16)


@pytest.fixture
def transport(memory, interrupt, loop):
    t = MmioTransport(TwoQueues(), memory, interrupt, loop)
    yield t
    t.close()


def isr_read(fast):
    return fast.serve(Reg.INTERRUPT_STATUS, 4, False)


def test_register_offsets_match_the_constants():
    assert _mmio.REG_QUEUE_NOTIFY == Reg.QUEUE_NOTIFY
    assert _mmio.REG_INTERRUPT_STATUS == Reg.INTERRUPT_STATUS
    assert _mmio.REG_INTERRUPT_ACK == Reg.INTERRUPT_ACK


def test_one_isr_value_for_python_and_c(transport, interrupt):
    fast = transport.fast
    transport.signal_used(0)
    assert interrupt.count == 1
    assert isr_read(fast) == (SERVED, INT_VRING)
    assert transport.read(Reg.INTERRUPT_STATUS, 4) == INT_VRING == transport.interrupt_status
    transport.device.config_changed()  # status not DRIVER_OK: the bit is set, no interrupt
    assert isr_read(fast) == (SERVED, INT_VRING | INT_CONFIG) and interrupt.count == 1
    assert fast.serve(Reg.INTERRUPT_ACK, 4, True, INT_VRING) == (SERVED, 0)
    assert transport.interrupt_status == INT_CONFIG
    transport.write(Reg.INTERRUPT_ACK, 4, INT_CONFIG)  # the Python path acks the same value
    assert isr_read(fast) == (SERVED, 0)
    assert fast.counters() == {"isr_reads": 3, "acks": 1, "notifies": 0}


def test_a_bare_irqfd_line_is_signalled_from_c(memory, loop):
    """A line that only writes its eventfd (`direct`) gets the device's used-buffer
    interrupts from C: ISR bit first, then the eventfd, and no Python trigger()."""
    from devices.virtio.testing import FakeInterrupt

    class BareIrqfd(FakeInterrupt):
        direct = True

    line = BareIrqfd()
    t = MmioTransport(TwoQueues(), memory, line, loop)
    try:
        signal = t._used_signaller()
        assert isinstance(signal, _mmio.VringSignal)
        signal(0)
        signal(1)
        assert isr_read(t.fast) == (SERVED, INT_VRING)
        assert os.eventfd_read(line.fd) == 2 and line.count == 0
    finally:
        t.close()
        os.close(line.fd)


def test_other_lines_keep_the_python_signal(transport, interrupt):
    assert transport._used_signaller() == transport.signal_used


def test_saved_and_restored_isr_is_the_c_value(transport, memory, interrupt, loop):
    transport.fast.raise_bits(INT_CONFIG)
    state = transport.save()
    assert state.interrupt_status == INT_CONFIG
    other = MmioTransport(TwoQueues(), memory, interrupt, loop)
    try:
        other.restore(TransportState.from_dict(__import__("dataclasses").asdict(state)))
        assert isr_read(other.fast) == (SERVED, INT_CONFIG)
    finally:
        other.close()


def test_reset_clears_the_isr(transport):
    transport.signal_used(0)
    transport.write(Reg.STATUS, 4, 0)
    assert isr_read(transport.fast) == (SERVED, 0)


def test_other_accesses_are_passed_back(transport):
    fast = transport.fast
    for offset, size, is_write in ((Reg.MAGIC, 4, False), (Reg.STATUS, 4, True), (Reg.INTERRUPT_STATUS, 2, False),
                                   (Reg.INTERRUPT_ACK, 4, False), (Reg.INTERRUPT_STATUS, 4, True),
                                   (Reg.QUEUE_NOTIFY, 4, False), (Reg.CONFIG, 4, False), (Reg.QUEUE_NOTIFY, 1, True)):
        assert fast.serve(offset, size, is_write)[0] == PASSED, (offset, size, is_write)
    assert fast.counters() == {"isr_reads": 0, "acks": 0, "notifies": 0}


def test_queue_notify_writes_the_queue_eventfd(transport):
    fast = transport.fast
    assert fast.serve(Reg.QUEUE_NOTIFY, 4, True, 1) == (SERVED, 0)
    assert os.eventfd_read(transport.queue_events[1]) == 1
    with pytest.raises(BlockingIOError):
        os.eventfd_read(transport.queue_events[0])
    assert fast.serve(Reg.QUEUE_NOTIFY, 4, True, 2) == (SERVED, 0)  # no such queue: ignored
    assert fast.serve(Reg.QUEUE_NOTIFY, 4, True, 0xFFFFFFFF) == (SERVED, 0)
    for fd in transport.queue_events:
        with pytest.raises(BlockingIOError):
            os.eventfd_read(fd)


def test_no_kicks_from_c_after_close(memory, interrupt, loop):
    t = MmioTransport(TwoQueues(), memory, interrupt, loop)
    fast = t.fast
    t.close()
    r, w = os.pipe()  # would take the fd number a kick wrote to, had it not been forgotten
    try:
        assert fast.serve(Reg.QUEUE_NOTIFY, 4, True, 0) == (SERVED, 0)
        os.set_blocking(r, False)
        with pytest.raises(BlockingIOError):
            os.read(r, 8)
    finally:
        os.close(r)
        os.close(w)


def test_too_many_queues_is_refused():
    with pytest.raises(ValueError, match="at most"):
        _mmio.MmioFastPath(list(range(_mmio.MAX_NOTIFY_QUEUES + 1)))


def test_concurrent_raise_and_ack_lose_no_bit():
    """Two threads: one raises and acks INT_CONFIG, the other raises INT_VRING once per
    round after the 'guest' acked it; every round completes."""
    fast = _mmio.MmioFastPath()
    stop = threading.Event()

    def noise():
        while not stop.is_set():
            fast.raise_bits(INT_CONFIG)
            fast.serve(Reg.INTERRUPT_ACK, 4, True, INT_CONFIG)

    w = threading.Thread(target=noise, daemon=True)
    w.start()
    try:
        for _ in range(5000):
            fast.raise_bits(INT_VRING)
            assert isr_read(fast)[1] & INT_VRING
            fast.serve(Reg.INTERRUPT_ACK, 4, True, INT_VRING)
            assert not isr_read(fast)[1] & INT_VRING
    finally:
        stop.set()
        w.join(5)


ACCESS = st.tuples(st.sampled_from([Reg.QUEUE_NOTIFY, Reg.INTERRUPT_STATUS, Reg.INTERRUPT_ACK, Reg.STATUS,
                                    Reg.MAGIC, Reg.CONFIG, 0x61, 0x62, 0x66]) | st.integers(0, 0x1FF),
                   st.sampled_from([1, 2, 4, 8]), st.booleans(), st.integers(0, 0xFFFFFFFF),
                   st.integers(0, 3))


@settings(max_examples=300, deadline=None)
@given(st.lists(ACCESS, max_size=40))
def test_c_path_agrees_with_the_python_registers(accesses):
    """Any access sequence (with device threads raising bits between them): what the C
    handler serves is what the transport's Python read/write would have done."""
    from devices.virtio.testing import EventLoop, FakeGuestMemory, FakeInterrupt

    irq = FakeInterrupt()  # one for both: each holds an eventfd, and hypothesis runs 300 examples
    c_side = MmioTransport(TwoQueues(), FakeGuestMemory(1 << 20), irq, EventLoop())
    py_side = MmioTransport(TwoQueues(), FakeGuestMemory(1 << 20), irq, EventLoop())
    try:
        for offset, size, is_write, value, raised in accesses:
            for t in (c_side, py_side):
                t.fast.raise_bits(raised)
            value &= (1 << 8 * size) - 1
            rc, got = c_side.fast.serve(offset, size, is_write, value)
            if rc == PASSED:
                if is_write:
                    c_side.write(offset, size, value)
                else:
                    got = c_side.read(offset, size)
            if is_write:
                py_side.write(offset, size, value)
            else:
                assert got == py_side.read(offset, size), (offset, size)
            assert c_side.interrupt_status == py_side.interrupt_status
        for a, b in zip(c_side.queue_events, py_side.queue_events):  # the same kicks reached the device
            assert _drain(a) == _drain(b)
    finally:
        c_side.close()
        py_side.close()
        os.close(irq.fd)


def _drain(fd):
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0
