"""The virtio-mmio v2 transport: registers, features, status table, queues, interrupts."""
from __future__ import annotations

import dataclasses
import json

import pytest

from devices.virtio.constants import F_EVENT_IDX, F_VERSION_1, INT_CONFIG, INT_VRING, DeviceType, Reg, Status, bit
from devices.virtio.device import VirtioDevice
from devices.virtio.mmio import ALLOWED_STATUS_STEPS, MmioTransport
from devices.virtio.persist import TransportState
from devices.virtio.testing import MockDriver


class EchoDevice(VirtioDevice):
    """Copies each request's readable bytes into its writable buffers."""

    device_type = DeviceType.RNG
    queue_max_sizes = (16, 16)

    def __init__(self):
        super().__init__()
        self.seen_memory = None

    def config_space(self):
        return bytes(range(16))

    def activated(self):
        self.seen_memory = self.active.memory

    def process_queue(self, index):
        self.drain(index, lambda c: c.write(0, c.read()))


@pytest.fixture
def transport(memory, interrupt, loop, queue_cls):
    t = MmioTransport(EchoDevice(), memory, interrupt, loop)
    yield t
    t.close()


def test_identity_registers(transport):
    r = lambda off: transport.read(off, 4)
    assert r(Reg.MAGIC) == 0x74726976 and r(Reg.VERSION) == 2
    assert r(Reg.DEVICE_ID) == DeviceType.RNG
    assert transport.read(Reg.MAGIC, 2) == 0  # registers are 32-bit only
    assert transport.read(Reg.MAGIC + 1, 4) == 0


def test_features_paged(transport):
    transport.write(Reg.DEVICE_FEATURES_SEL, 4, 1)
    assert transport.read(Reg.DEVICE_FEATURES, 4) & 1  # VERSION_1 is bit 32
    transport.write(Reg.DEVICE_FEATURES_SEL, 4, 7)
    assert transport.read(Reg.DEVICE_FEATURES, 4) == 0


def test_config_space_access(transport):
    assert transport.read(Reg.CONFIG + 4, 1) == 4
    assert transport.read(Reg.CONFIG + 4, 4) == 0x07060504
    assert transport.read(Reg.CONFIG + 14, 4) == 0x0F0E  # past the end reads as 0
    assert transport.read(Reg.CONFIG + 0x800, 4) == 0


def test_status_table_refuses_skips(transport):
    transport.write(Reg.STATUS, 4, Status.ACKNOWLEDGE | Status.DRIVER | Status.DRIVER_OK)
    assert transport.read(Reg.STATUS, 4) == 0
    assert (Status.RESET, Status.ACKNOWLEDGE) in ALLOWED_STATUS_STEPS


def test_version_1_required(transport):
    transport.write(Reg.STATUS, 4, Status.ACKNOWLEDGE)
    transport.write(Reg.STATUS, 4, Status.ACKNOWLEDGE | Status.DRIVER)
    transport.write(Reg.DRIVER_FEATURES, 4, 0)  # legacy driver: no VERSION_1
    transport.write(Reg.STATUS, 4, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK)
    assert not transport.read(Reg.STATUS, 4) & Status.FEATURES_OK


def test_unknown_feature_refused(transport):
    transport.write(Reg.STATUS, 4, Status.ACKNOWLEDGE)
    transport.write(Reg.STATUS, 4, Status.ACKNOWLEDGE | Status.DRIVER)
    transport.write(Reg.DRIVER_FEATURES_SEL, 4, 1)
    transport.write(Reg.DRIVER_FEATURES, 4, 1 | 0x80000000)
    transport.write(Reg.STATUS, 4, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK)
    assert not transport.read(Reg.STATUS, 4) & Status.FEATURES_OK


def test_no_memory_before_driver_ok(transport, memory):
    assert transport.device.active is None
    d = MockDriver(transport, memory)
    assert transport.device.seen_memory is memory
    assert d.features & bit(F_VERSION_1) and d.features & bit(F_EVENT_IDX)


def test_echo_through_notify_and_eventloop(transport, memory, loop, interrupt):
    d = MockDriver(transport, memory, queue_size=8)
    q = d.queues[1]
    q.set_used_event(0)
    head = q.add([b"ping!"], [5])
    d.kick(1)  # QueueNotify write -> eventfd -> event loop, like KVM's ioeventfd
    assert transport.device.active is not None
    assert loop.run_once() == 1
    assert q.get_used() == [(head, 5)]
    assert q.written(head) == b"ping!"
    assert interrupt.count == 1
    assert d.ack_interrupt() == INT_VRING
    assert transport.read(Reg.INTERRUPT_STATUS, 4) == 0


def test_ioeventfds_for_kvm(transport):
    fds = transport.ioeventfds()
    assert [(off, dm) for off, dm, _ in fds] == [(0x50, 0), (0x50, 1)]


def test_bad_chain_dropped_device_keeps_going(transport, memory, loop):
    d = MockDriver(transport, memory, queue_size=8)
    q = d.queues[0]
    q.write_desc(7, memory.size, 16, 0, 0)  # outside RAM
    q.publish(7)
    good = q.add([b"ok"], [2])
    d.kick(0)
    loop.run_once()
    assert q.get_used() == [(7, 0), (good, 2)]
    assert transport.device.invalid_chains == 1


def test_corrupt_queue_needs_reset(transport, memory, loop, interrupt):
    d = MockDriver(transport, memory, queue_size=8)
    memory.write(d.queues[0].avail + 2, (200).to_bytes(2, "little"))
    d.kick(0)
    loop.run_once()
    assert transport.read(Reg.STATUS, 4) & Status.DEVICE_NEEDS_RESET
    assert transport.read(Reg.INTERRUPT_STATUS, 4) & INT_CONFIG
    assert transport.device.active is None
    transport.write(Reg.STATUS, 4, 0)  # driver resets: clean slate
    assert transport.read(Reg.STATUS, 4) == 0
    MockDriver(transport, memory, queue_size=8)
    assert transport.device.active is not None


def test_ring_outside_memory_at_driver_ok(transport, memory):
    t = transport
    t.write(Reg.STATUS, 4, 1)
    t.write(Reg.STATUS, 4, 3)
    t.write(Reg.DRIVER_FEATURES_SEL, 4, 1)
    t.write(Reg.DRIVER_FEATURES, 4, 1)
    t.write(Reg.STATUS, 4, 11)
    t.write(Reg.QUEUE_NUM, 4, 8)
    t.write(Reg.QUEUE_DESC_HIGH, 4, 0xFFFF)
    t.write(Reg.QUEUE_READY, 4, 1)
    t.write(Reg.STATUS, 4, 15)
    assert t.read(Reg.STATUS, 4) & Status.DEVICE_NEEDS_RESET
    assert t.device.active is None


def test_queue_num_above_max(transport, memory):
    t = transport
    for s in (1, 3):
        t.write(Reg.STATUS, 4, s)
    t.write(Reg.DRIVER_FEATURES_SEL, 4, 1)
    t.write(Reg.DRIVER_FEATURES, 4, 1)
    t.write(Reg.STATUS, 4, 11)
    t.write(Reg.QUEUE_NUM, 4, 32)
    t.write(Reg.QUEUE_READY, 4, 1)
    t.write(Reg.STATUS, 4, 15)
    assert t.read(Reg.STATUS, 4) & Status.DEVICE_NEEDS_RESET


def test_reset_clears_everything(transport, memory):
    MockDriver(transport, memory, queue_size=8)
    transport.write(Reg.STATUS, 4, 0)
    assert transport.device.active is None and transport.device.acked_features == 0
    transport.write(Reg.QUEUE_SEL, 4, 0)
    assert transport.read(Reg.QUEUE_READY, 4) == 0


def test_config_change_interrupt(transport, memory, interrupt):
    MockDriver(transport, memory, queue_size=8)
    gen = transport.read(Reg.CONFIG_GENERATION, 4)
    transport.device.config_changed()
    assert transport.read(Reg.CONFIG_GENERATION, 4) == gen + 1
    assert transport.read(Reg.INTERRUPT_STATUS, 4) & INT_CONFIG and interrupt.count == 1


def test_save_restore_compare(transport, memory, interrupt, loop):
    d = MockDriver(transport, memory, queue_size=8)
    q = d.queues[1]
    q.add([b"a"], [1])
    d.kick(1)
    loop.run_once()
    state = transport.save()
    blob = json.dumps(dataclasses.asdict(state))
    restored = TransportState.from_dict(json.loads(blob))
    assert restored == state
    t2 = MmioTransport(EchoDevice(), memory, interrupt, loop)
    t2.restore(restored)
    assert t2.save() == state
    head = q.add([b"b"], [1])
    t2.write(Reg.QUEUE_NOTIFY, 4, 1)
    loop.run_once()
    assert q.get_used()[-1] == (head, 1)
    t2.close()
