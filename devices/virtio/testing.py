"""A driver-side mock for tests and benchmarks (like rust-vmm virtio-queue's `mock`).

`FakeGuestMemory` is a bytearray behind the GuestMemory protocol, `FakeInterrupt` an
eventfd-backed InterruptLine, `EventLoop` a minimal EventRegistry that dispatches
readable fds, `DriverQueue` lays out and fills a split virtqueue as a guest driver would,
and `MockDriver` brings a device up through the MMIO registers and kicks queues by
writing QueueNotify — which lands on the same eventfd KVM's ioeventfd would signal.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import select
import struct
import time
from typing import Callable

from devices.interfaces import GuestMemoryError

from .constants import F_VERSION_1, Reg, Status, bit
from .ring import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, avail_ring_bytes, desc_table_bytes

_DESC = struct.Struct("<QIHH")


class FakeGuestMemory:
    """Guest RAM at gpa 0, bounds-checked like the real thing: a bytearray, or with
    `memfd=True` a shared mapping of a memfd like the VMM's (for the balloon)."""

    def __init__(self, size: int, memfd: bool = False) -> None:
        self.size = size
        self.fd = -1
        if memfd:
            self.fd = os.memfd_create("mm-test-guest", os.MFD_CLOEXEC)
            os.ftruncate(self.fd, size)
            self.buf = mmap.mmap(self.fd, size)
        else:
            self.buf = bytearray(size)
        self._mv = memoryview(self.buf)

    def allocated(self) -> int:
        """Bytes of the memfd actually backed by host pages."""
        return os.fstat(self.fd).st_blocks * 512

    def _check(self, gpa: int, length: int) -> None:
        if gpa < 0 or length < 0 or gpa + length > self.size:
            raise GuestMemoryError(f"[{gpa:#x}, +{length:#x}) is outside guest memory of {self.size:#x} bytes")

    def read(self, gpa: int, length: int) -> bytes:
        self._check(gpa, length)
        return bytes(self.buf[gpa:gpa + length])

    def write(self, gpa: int, data: bytes) -> None:
        self._check(gpa, len(data))
        self.buf[gpa:gpa + len(data)] = data

    def view(self, gpa: int, length: int) -> memoryview:
        self._check(gpa, length)
        return self._mv[gpa:gpa + length]

    def host_address(self, gpa: int, length: int) -> int:
        self._check(gpa, length)
        return ctypes.addressof(ctypes.c_char.from_buffer(self.buf)) + gpa


class FakeInterrupt:
    """An InterruptLine that counts triggers and signals an eventfd like an irqfd."""

    def __init__(self) -> None:
        self.count = 0
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def trigger(self) -> None:
        self.count += 1
        os.eventfd_write(self.fd, 1)

    def fileno(self) -> int:
        return self.fd


class EventLoop:
    """An EventRegistry: `run_once()` calls the callbacks of readable fds."""

    def __init__(self) -> None:
        self.readers: dict[int, Callable[[], None]] = {}

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self.readers[fd] = callback

    def remove_reader(self, fd: int) -> None:
        self.readers.pop(fd, None)

    def run_once(self, timeout: float = 0.0) -> int:
        if not self.readers:
            return 0
        ready, _, _ = select.select(list(self.readers), [], [], timeout)
        for fd in ready:
            cb = self.readers.get(fd)
            if cb is not None:
                cb()
        return len(ready)


class Allocator:
    """A bump allocator of guest-physical ranges for rings and buffers."""

    def __init__(self, start: int, end: int) -> None:
        self.next, self.end = start, end

    def alloc(self, length: int, align: int = 16) -> int:
        addr = (self.next + align - 1) & ~(align - 1)
        if addr + length > self.end:
            raise MemoryError("mock guest memory exhausted")
        self.next = addr + length
        return addr


class DriverQueue:
    """The driver side of one split virtqueue in guest memory."""

    def __init__(self, memory, size: int, alloc: Allocator) -> None:
        self.memory, self.size, self.alloc = memory, size, alloc
        self.desc = alloc.alloc(desc_table_bytes(size), 16)
        self.avail = alloc.alloc(avail_ring_bytes(size), 2)
        self.used = alloc.alloc(6 + 8 * size, 4)
        self.free = list(range(size))
        self.avail_idx = 0
        self.last_used = 0
        self.chains: dict[int, tuple] = {}  # head -> (descriptor ids, buffers) in flight
        self.completed: dict[int, list] = {}  # head -> buffers of the last used chain

    def write_desc(self, index: int, addr: int, length: int, flags: int, nxt: int) -> None:
        self.memory.write(self.desc + 16 * index, _DESC.pack(addr, length, flags, nxt))

    def publish(self, head: int) -> None:
        """Put `head` in the avail ring and bump avail idx."""
        self.memory.write(self.avail + 4 + 2 * (self.avail_idx % self.size), struct.pack("<H", head))
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.memory.write(self.avail + 2, struct.pack("<H", self.avail_idx))

    def add(self, readable: list[bytes], writable: list[int], indirect: bool = False) -> int:
        """Lay out buffers (readable data, then writable sizes), publish, return the head."""
        bufs = [(self._buffer(d), len(d), 0) for d in readable]
        bufs += [(self.alloc.alloc(n), n, DESC_F_WRITE) for n in writable]
        if indirect:
            table = self.alloc.alloc(16 * len(bufs))
            for i, (a, n, f) in enumerate(bufs):
                more = DESC_F_NEXT if i + 1 < len(bufs) else 0
                self.memory.write(table + 16 * i, _DESC.pack(a, n, f | more, i + 1 if more else 0))
            head = self.free.pop(0)
            self.write_desc(head, table, 16 * len(bufs), DESC_F_INDIRECT, 0)
            ids = [head]
        else:
            ids = [self.free.pop(0) for _ in bufs]
            for i, (a, n, f) in enumerate(bufs):
                more = i + 1 < len(bufs)
                self.write_desc(ids[i], a, n, f | (DESC_F_NEXT if more else 0), ids[i + 1] if more else 0)
            head = ids[0]
        self.chains[head] = (ids, bufs)
        self.publish(head)
        return head

    def _buffer(self, data: bytes) -> int:
        addr = self.alloc.alloc(max(len(data), 1))
        self.memory.write(addr, data)
        return addr

    def used_idx(self) -> int:
        return struct.unpack("<H", self.memory.read(self.used + 2, 2))[0]

    def get_used(self) -> list[tuple[int, int]]:
        """New used entries (head, length) since the last call; frees their descriptors."""
        out = []
        while self.last_used != self.used_idx():
            off = self.used + 4 + 8 * (self.last_used % self.size)
            head, length = struct.unpack("<II", self.memory.read(off, 8))
            out.append((head, length))
            if head in self.chains:
                ids, bufs = self.chains.pop(head)
                self.free.extend(ids)
                self.completed[head] = bufs
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out

    def wait_used(self, count: int = 1, timeout: float = 5.0) -> list[tuple[int, int]]:
        """Collect `count` used entries, waiting for a device that works on its own thread."""
        deadline = time.monotonic() + timeout
        out: list = []
        while len(out) < count:
            out += self.get_used()
            if len(out) < count:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {len(out)} of {count} used entries after {timeout}s")
                time.sleep(0.0005)
        return out

    def written(self, head: int, length: int | None = None) -> bytes:
        """The concatenated contents of chain `head`'s writable buffers."""
        bufs = self.completed.get(head) or self.chains.get(head, ((), ()))[1]
        out = b"".join(self.memory.read(a, n) for a, n, f in bufs if f & DESC_F_WRITE)
        return out if length is None else out[:length]

    def set_used_event(self, value: int) -> None:
        self.memory.write(self.avail + 4 + 2 * self.size, struct.pack("<H", value))

    def set_avail_flags(self, flags: int) -> None:
        self.memory.write(self.avail, struct.pack("<H", flags))


class MockDriver:
    """A guest driver for one device behind an MmioTransport, speaking only registers."""

    def __init__(self, transport, memory, features: int | None = None, queue_size: int = 256,
                 alloc: Allocator | None = None) -> None:
        self.t, self.memory = transport, memory
        self.alloc = alloc or Allocator(0x1000, memory.size)
        self.queues: list[DriverQueue] = []
        self._init(features, queue_size)

    def reg(self, offset: int) -> int:
        return self.t.read(offset, 4)

    def set(self, offset: int, value: int) -> None:
        self.t.write(offset, 4, value)

    def _init(self, features: int | None, queue_size: int) -> None:
        assert self.reg(Reg.MAGIC) == 0x74726976 and self.reg(Reg.VERSION) == 2
        self.set(Reg.STATUS, 0)
        self.set(Reg.STATUS, Status.ACKNOWLEDGE)
        self.set(Reg.STATUS, Status.ACKNOWLEDGE | Status.DRIVER)
        offered = 0
        for sel in (0, 1):
            self.set(Reg.DEVICE_FEATURES_SEL, sel)
            offered |= self.reg(Reg.DEVICE_FEATURES) << (32 * sel)
        self.offered = offered
        want = offered if features is None else (features | bit(F_VERSION_1)) & offered
        for sel in (0, 1):
            self.set(Reg.DRIVER_FEATURES_SEL, sel)
            self.set(Reg.DRIVER_FEATURES, (want >> (32 * sel)) & 0xFFFFFFFF)
        self.features = want
        self.set(Reg.STATUS, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK)
        assert self.reg(Reg.STATUS) & Status.FEATURES_OK, "device refused the features"
        for i in range(len(self.t.queues)):
            self.set(Reg.QUEUE_SEL, i)
            size = min(queue_size, self.reg(Reg.QUEUE_NUM_MAX))
            q = DriverQueue(self.memory, size, self.alloc)
            self.set(Reg.QUEUE_NUM, size)
            for lo, addr in ((Reg.QUEUE_DESC_LOW, q.desc), (Reg.QUEUE_DRIVER_LOW, q.avail),
                             (Reg.QUEUE_DEVICE_LOW, q.used)):
                self.set(lo, addr & 0xFFFFFFFF)
                self.set(lo + 4, addr >> 32)
            self.set(Reg.QUEUE_READY, 1)
            self.queues.append(q)
        self.set(Reg.STATUS, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK)

    def kick(self, queue: int) -> None:
        """Notify the device the way the guest does: a QueueNotify register write."""
        self.set(Reg.QUEUE_NOTIFY, queue)

    def ack_interrupt(self) -> int:
        status = self.reg(Reg.INTERRUPT_STATUS)
        self.set(Reg.INTERRUPT_ACK, status)
        return status

    def config(self, offset: int, size: int) -> int:
        return self.t.read(Reg.CONFIG + offset, size)
