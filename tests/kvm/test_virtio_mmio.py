"""The virtio-mmio register protocol driven by a tiny test guest on this host's /dev/kvm.

The guest does what a Linux driver does, in a few hundred instructions: reads magic,
version, device and vendor id; steps the status through ACKNOWLEDGE, DRIVER,
FEATURES_OK and DRIVER_OK; reads the device features and acks VERSION_1; sets up a queue
(size, ring addresses, ready); posts one buffer and kicks the queue. The transport is on
the MMIO bus exactly as vmm.machine wires it: the kick is a KVM ioeventfd (it must never
reach the transport as an MMIO write), the device is served by the VMM's event loop. Each
register value the guest read is stored in a results page the test inspects afterwards.
"""
from __future__ import annotations

import threading

import pytest

from devices.virtio.constants import MMIO_MAGIC, VENDOR_ID, DeviceType, Reg, Status
from devices.virtio.mmio import MmioTransport
from devices.virtio.testing import FakeInterrupt
from vmm._fast.runloop import RunExit

from tests.kvm.guest import TestVm

BASE = 0xD000_0000
RESULTS = 0x300000
DESC, AVAIL, USED, BUFFER = 0x200000, 0x201000, 0x202000, 0x203000
QUEUE_SIZE, BUF_LEN = 8, 64


class Recorder:
    """The transport as a BusDevice, logging every access the vCPU made."""

    def __init__(self, transport):
        self.t = transport
        self.log = []

    def read(self, offset, size):
        self.log.append(("r", offset, size))
        return self.t.read(offset, size)

    def write(self, offset, size, value):
        self.log.append(("w", offset, size, value))
        self.t.write(offset, size, value)


class Guest:
    """Builds the guest program: rbx = device base, rdi = results page."""

    def __init__(self):
        self.lines = [f"mov rbx, {BASE:#x}", f"mov rdi, {RESULTS:#x}"]
        self.slots: dict[str, int] = {}

    def rd(self, name: str, reg: int, width: int = 4) -> "Guest":
        slot = len(self.slots)
        self.slots[name] = slot
        if width == 1:
            self.lines += [f"movzx eax, byte ptr [rbx + {reg:#x}]"]
        else:
            self.lines += [f"mov eax, dword ptr [rbx + {reg:#x}]"]
        self.lines += [f"mov dword ptr [rdi + {4 * slot}], eax"]
        return self

    def wr(self, reg: int, value: int) -> "Guest":
        self.lines.append(f"mov dword ptr [rbx + {reg:#x}], {value:#x}")
        return self

    def asm(self, *lines: str) -> "Guest":
        self.lines += lines
        return self

    def source(self) -> str:
        return "\n".join(self.lines + ["hlt"])

    def results(self, mem) -> dict[str, int]:
        return {name: int.from_bytes(mem.read(RESULTS + 4 * slot, 4), "little") for name, slot in self.slots.items()}


def handshake(g: Guest, driver_features_low: int, driver_features_high: int) -> Guest:
    g.rd("magic", Reg.MAGIC).rd("version", Reg.VERSION).rd("device_id", Reg.DEVICE_ID).rd("vendor", Reg.VENDOR_ID)
    g.wr(Reg.STATUS, Status.ACKNOWLEDGE).wr(Reg.STATUS, Status.ACKNOWLEDGE | Status.DRIVER)
    g.wr(Reg.DEVICE_FEATURES_SEL, 0).rd("features_low", Reg.DEVICE_FEATURES)
    g.wr(Reg.DEVICE_FEATURES_SEL, 1).rd("features_high", Reg.DEVICE_FEATURES)
    g.wr(Reg.DRIVER_FEATURES_SEL, 1).wr(Reg.DRIVER_FEATURES, driver_features_high)
    g.wr(Reg.DRIVER_FEATURES_SEL, 0).wr(Reg.DRIVER_FEATURES, driver_features_low)
    g.wr(Reg.STATUS, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK).rd("status_features_ok", Reg.STATUS)
    return g


def start_loop():
    from vmm.worker.loop import Loop

    loop = Loop()
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    return loop, thread


def test_handshake_queue_setup_and_one_request(kvm):
    from devices.virtio.rng.device import RngDevice

    g = handshake(Guest(), 0, 1)  # VERSION_1 only
    g.wr(Reg.QUEUE_SEL, 0).rd("queue_num_max", Reg.QUEUE_NUM_MAX).rd("ready_before", Reg.QUEUE_READY)
    g.wr(Reg.QUEUE_NUM, QUEUE_SIZE)
    for low, addr in ((Reg.QUEUE_DESC_LOW, DESC), (Reg.QUEUE_DRIVER_LOW, AVAIL), (Reg.QUEUE_DEVICE_LOW, USED)):
        g.wr(low, addr).wr(low + 4, 0)
    g.wr(Reg.QUEUE_READY, 1).rd("ready_after", Reg.QUEUE_READY)
    g.wr(Reg.STATUS, 0xF).rd("status_driver_ok", Reg.STATUS)
    # One device-writable descriptor, published in the avail ring, then the kick.
    g.asm(f"mov rsi, {DESC:#x}", f"mov rax, {BUFFER:#x}", "mov qword ptr [rsi], rax",
          f"mov dword ptr [rsi + 8], {BUF_LEN}", "mov word ptr [rsi + 12], 2", "mov word ptr [rsi + 14], 0",
          f"mov rsi, {AVAIL:#x}", "mov word ptr [rsi + 4], 0", "mfence", "mov word ptr [rsi + 2], 1", "mfence")
    g.wr(Reg.QUEUE_NOTIFY, 0)
    # Wait (bounded: ~2M instructions) for the used ring to move.
    g.asm(f"mov rsi, {USED:#x}", "mov ecx, 400000",
          "1: movzx eax, word ptr [rsi + 2]", "test eax, eax", "jnz 2f", "dec ecx", "jnz 1b", "2:")
    g.rd("interrupt_status", Reg.INTERRUPT_STATUS).wr(Reg.INTERRUPT_ACK, 1).rd("interrupt_acked", Reg.INTERRUPT_STATUS)
    g.wr(Reg.STATUS, 0).rd("status_reset", Reg.STATUS).rd("ready_reset", Reg.QUEUE_READY)

    loop, thread = start_loop()
    irq = FakeInterrupt()
    with TestVm(kvm, g.source()) as t:
        transport = MmioTransport(RngDevice(), t.mem, irq, loop)
        rec = Recorder(transport)
        t.mmio.register(BASE, 0x1000, rec)
        for offset, datamatch, fd in transport.ioeventfds():
            t.vm.ioeventfd(fd, BASE + offset, 4, datamatch=datamatch)
        try:
            assert t.run(timeout=60)[0].reason == RunExit.HLT
            r = g.results(t.mem)
            used_idx = int.from_bytes(t.mem.read(USED + 2, 2), "little")
            used_id, used_len = (int.from_bytes(t.mem.read(USED + 4 + 4 * i, 4), "little") for i in range(2))
            buffer = t.mem.read(BUFFER, BUF_LEN)
            metrics = transport.device.metrics
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            transport.close()
    assert (r["magic"], r["version"], r["device_id"], r["vendor"]) == (MMIO_MAGIC, 2, DeviceType.RNG, VENDOR_ID)
    assert r["features_high"] & 1  # VERSION_1 (feature bit 32)
    assert r["status_features_ok"] == 0xB and r["status_driver_ok"] == 0xF
    assert (r["queue_num_max"], r["ready_before"], r["ready_after"]) == (256, 0, 1)
    # The request was served: 64 random bytes, one used entry, one interrupt.
    assert (used_idx, used_id, used_len) == (1, 0, BUF_LEN)
    assert buffer != bytes(BUF_LEN) and metrics.requests == 1
    assert r["interrupt_status"] == 1 and r["interrupt_acked"] == 0 and irq.count >= 1
    assert (r["status_reset"], r["ready_reset"]) == (0, 0)
    # KVM's ioeventfd took the kick: it never reached the transport as an MMIO exit.
    assert not [e for e in rec.log if e[0] == "w" and e[1] == Reg.QUEUE_NOTIFY]
    assert ("w", Reg.STATUS, 4, 0xF) in rec.log


def test_refused_steps_and_config_space(kvm, tmp_path):
    from devices.virtio.block.device import BlockDevice

    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))  # 2048 sectors
    g = handshake(Guest(), 0, 0)  # no VERSION_1: the device must refuse FEATURES_OK
    g.wr(Reg.STATUS, Status.ACKNOWLEDGE | Status.DRIVER | Status.DRIVER_OK).rd("status_skip", Reg.STATUS)
    g.wr(Reg.QUEUE_SEL, 7).rd("num_max_no_queue", Reg.QUEUE_NUM_MAX)
    g.rd("shm_len", Reg.SHM_LEN_LOW)
    g.rd("capacity_low", Reg.CONFIG).rd("capacity_high", Reg.CONFIG + 4).rd("capacity_byte1", Reg.CONFIG + 1, width=1)
    g.rd("generation", Reg.CONFIG_GENERATION)
    g.wr(Reg.STATUS, Status.ACKNOWLEDGE | Status.DRIVER | Status.FAILED).rd("status_failed", Reg.STATUS)

    loop, thread = start_loop()
    with TestVm(kvm, g.source()) as t:
        transport = MmioTransport(BlockDevice(str(disk)), t.mem, FakeInterrupt(), loop)
        t.mmio.register(BASE, 0x1000, transport)
        try:
            assert t.run(timeout=60)[0].reason == RunExit.HLT
            r = g.results(t.mem)
            active = transport.device.active
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            transport.close()
    assert r["device_id"] == DeviceType.BLOCK
    assert r["status_features_ok"] == 0x3  # FEATURES_OK stays clear without VERSION_1
    assert r["status_skip"] == 0x3  # DRIVER_OK without FEATURES_OK is not a legal step
    assert active is None  # so the device never got guest memory
    assert r["num_max_no_queue"] == 0 and r["shm_len"] == 0xFFFFFFFF
    assert (r["capacity_low"], r["capacity_high"], r["capacity_byte1"]) == (2048, 0, 2048 >> 8)
    assert r["generation"] == 0
    assert r["status_failed"] == 0x83
