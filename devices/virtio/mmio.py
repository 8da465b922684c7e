"""virtio-mmio version 2 transport: the register file one virtio device sits behind.

The VMM maps an instance at a guest-physical base (region `MMIO_REGION_SIZE` bytes),
routes MMIO exits in that range to `read`/`write` (it is a `BusDevice`), registers each
`(offset, datamatch, eventfd)` from `ioeventfds()` with KVM_IOEVENTFD so queue kicks
never reach Python on a vCPU thread, and passes an InterruptLine (an irqfd) for the
device's interrupt. Status changes follow the literal table `ALLOWED_STATUS_STEPS`.
Guest memory is handed to the device only at DRIVER_OK.

The InterruptStatus value lives in a `MmioFastPath` (devices/virtio/_mmio.pyx), which the
run loop reaches through `c_io_handler()`: the InterruptStatus read and InterruptACK write
every interrupt costs (and a QueueNotify write no ioeventfd caught) are served in C on the
vCPU thread without the GIL, everything else comes back here. Device threads set ISR bits
with an atomic OR before firing the irqfd; `interrupt_status` reads the same value.
"""
from __future__ import annotations

import dataclasses
import os

from ._mmio import MmioFastPath, VringSignal
from .constants import (
    F_EVENT_IDX, F_INDIRECT_DESC, F_VERSION_1, INT_CONFIG, INT_VRING, MMIO_MAGIC, MMIO_VERSION,
    VENDOR_ID, Reg, Status, bit,
)
from .device import Activated, VirtioDevice, drain_eventfd
from .errors import QueueCorrupt
from .persist import TransportState
from .queue import SplitQueue
from .ring import QueueState

S = Status
_INIT = S.ACKNOWLEDGE | S.DRIVER
# The driver's status writes that are legal from each status (virtio 1.2 §3.1.1);
# a write of 0 (reset) and setting FAILED are allowed from anywhere.
ALLOWED_STATUS_STEPS = frozenset({
    (S.RESET, S.ACKNOWLEDGE),
    (S.ACKNOWLEDGE, _INIT),
    (_INIT, _INIT | S.FEATURES_OK),
    (_INIT | S.FEATURES_OK, _INIT | S.FEATURES_OK | S.DRIVER_OK),
})


@dataclasses.dataclass
class QueueConfig:
    """The driver's setup of one queue, before and after it is made ready."""

    max_size: int
    size: int = 0
    ready: bool = False
    desc: int = 0
    avail: int = 0
    used: int = 0


class MmioTransport:
    """One virtio device behind the virtio-mmio v2 register layout."""

    def __init__(self, device: VirtioDevice, memory, interrupt, events) -> None:
        self.device = device
        self.memory = memory
        self.interrupt = interrupt
        self.events = events
        self.queue_events = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in device.queue_max_sizes]
        self.fast = MmioFastPath(self.queue_events)
        self.last_error: Exception | None = None  # why the device asked for a reset
        device.on_config_change = self._config_interrupt
        self._clear()

    def _clear(self) -> None:
        self.status = Status.RESET
        self.device_features_sel = 0
        self.driver_features_sel = 0
        self.driver_features = 0
        self.queue_sel = 0
        self.fast.isr = 0
        self.queues = [QueueConfig(m) for m in self.device.queue_max_sizes]

    def ioeventfds(self) -> list[tuple[int, int, int]]:
        """(offset from base, datamatch, eventfd) for each queue: register with KVM_IOEVENTFD
        (4-byte write, DATAMATCH) at base + offset."""
        return [(int(Reg.QUEUE_NOTIFY), i, fd) for i, fd in enumerate(self.queue_events)]

    def c_io_handler(self):
        """The run loop's C handler (InterruptStatus, InterruptACK, QueueNotify); every
        other access comes to read()/write()."""
        return self.fast.c_io_handler()

    @property
    def interrupt_status(self) -> int:
        return self.fast.isr

    @interrupt_status.setter
    def interrupt_status(self, value: int) -> None:
        self.fast.isr = value & 0xFFFFFFFF

    def close(self) -> None:
        self.device.close()
        self.fast.forget_notify_fds()
        for fd in self.queue_events:
            os.close(fd)
        self.queue_events = []

    # -- interrupts ------------------------------------------------------------------
    def signal_used(self, _queue: int) -> None:
        self.fast.raise_bits(INT_VRING)  # before the irqfd: the guest's ISR read sees it
        self.interrupt.trigger()

    def _config_interrupt(self) -> None:
        self.fast.raise_bits(INT_CONFIG)
        if self.status & Status.DRIVER_OK:
            self.interrupt.trigger()

    def fail(self, error: Exception) -> None:
        """The device cannot go on (corrupt queue): tell the driver to reset it."""
        self.device.reset()
        self.status |= Status.DEVICE_NEEDS_RESET
        self.last_error = error
        self._config_interrupt()

    # -- register reads --------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset >= Reg.CONFIG:
            return self._read_config(offset - Reg.CONFIG, size)
        if size != 4 or offset % 4:
            return 0
        q = self.queues[self.queue_sel] if self.queue_sel < len(self.queues) else None
        if offset == Reg.MAGIC:
            return MMIO_MAGIC
        if offset == Reg.VERSION:
            return MMIO_VERSION
        if offset == Reg.DEVICE_ID:
            return int(self.device.device_type)
        if offset == Reg.VENDOR_ID:
            return VENDOR_ID
        if offset == Reg.DEVICE_FEATURES:
            sel = self.device_features_sel
            return (self.device.avail_features >> (32 * sel)) & 0xFFFFFFFF if sel < 2 else 0
        if offset == Reg.QUEUE_NUM_MAX:
            return q.max_size if q else 0
        if offset == Reg.QUEUE_READY:
            return int(q.ready) if q else 0
        if offset == Reg.INTERRUPT_STATUS:
            return self.fast.isr
        if offset == Reg.STATUS:
            return int(self.status)
        if offset == Reg.SHM_LEN_LOW or offset == Reg.SHM_LEN_HIGH:
            return 0xFFFFFFFF  # no shared memory regions
        if offset == Reg.CONFIG_GENERATION:
            return self.device.config_generation
        return 0

    def _read_config(self, offset: int, size: int) -> int:
        if size not in (1, 2, 4, 8):
            return 0
        data = self.device.config_space()[offset:offset + size]
        return int.from_bytes(data.ljust(size, b"\0"), "little")

    # -- register writes -------------------------------------------------------------
    def write(self, offset: int, size: int, value: int) -> None:
        if offset >= Reg.CONFIG:
            if self.status & Status.DRIVER and size in (1, 2, 4, 8):
                self.device.write_config(offset - Reg.CONFIG, (value & ((1 << 8 * size) - 1)).to_bytes(size, "little"))
            return
        if size != 4 or offset % 4:
            return
        value &= 0xFFFFFFFF
        if offset == Reg.QUEUE_NOTIFY:
            if value < len(self.queue_events):
                os.eventfd_write(self.queue_events[value], 1)
        elif offset == Reg.INTERRUPT_ACK:
            self.fast.ack(value)
        elif offset == Reg.STATUS:
            self._set_status(value)
        elif offset == Reg.DEVICE_FEATURES_SEL:
            self.device_features_sel = value
        elif offset == Reg.DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif offset == Reg.DRIVER_FEATURES:
            self._write_features(value)
        elif offset == Reg.QUEUE_SEL:
            self.queue_sel = value
        else:
            self._write_queue(offset, value)

    def _write_features(self, value: int) -> None:
        if (self.status & (S.DRIVER | S.FEATURES_OK)) != S.DRIVER or self.driver_features_sel > 1:
            return
        shift = 32 * self.driver_features_sel
        self.driver_features = (self.driver_features & ~(0xFFFFFFFF << shift)) | (value << shift)

    def _write_queue(self, offset: int, value: int) -> None:
        if self.queue_sel >= len(self.queues) or not self.status & S.FEATURES_OK or self.status & S.DRIVER_OK:
            return
        q = self.queues[self.queue_sel]
        if offset == Reg.QUEUE_READY:
            q.ready = value == 1
            return
        if q.ready:
            return  # spec: the driver must not change a ready queue's setup
        if offset == Reg.QUEUE_NUM:
            q.size = value
        elif offset in (Reg.QUEUE_DESC_LOW, Reg.QUEUE_DESC_HIGH):
            q.desc = _set_half(q.desc, offset == Reg.QUEUE_DESC_HIGH, value)
        elif offset in (Reg.QUEUE_DRIVER_LOW, Reg.QUEUE_DRIVER_HIGH):
            q.avail = _set_half(q.avail, offset == Reg.QUEUE_DRIVER_HIGH, value)
        elif offset in (Reg.QUEUE_DEVICE_LOW, Reg.QUEUE_DEVICE_HIGH):
            q.used = _set_half(q.used, offset == Reg.QUEUE_DEVICE_HIGH, value)

    def _set_status(self, value: int) -> None:
        if value == 0:
            self.reset()
            return
        current = Status(self.status & ~S.DEVICE_NEEDS_RESET)
        if value & S.FAILED:
            self.device.reset()
            self.status |= S.FAILED
            return
        new = Status(value & 0xFF)
        if (current, new) not in ALLOWED_STATUS_STEPS:
            return
        if new & S.FEATURES_OK and not current & S.FEATURES_OK:
            if not self._accept_features():
                return  # FEATURES_OK stays clear: the driver reads it back and gives up
        self.status = new | (self.status & S.DEVICE_NEEDS_RESET)
        if new & S.DRIVER_OK:
            self._activate()

    def _accept_features(self) -> bool:
        wanted = self.driver_features
        if not wanted & bit(F_VERSION_1) or wanted & ~self.device.avail_features:
            return False
        self.device.acked_features = wanted
        return True

    def _activate(self, restored: tuple | None = None) -> None:
        acked = self.device.acked_features
        try:
            queues = []
            for i, c in enumerate(self.queues):
                if not c.ready:
                    queues.append(None)
                    continue
                if not 0 < c.size <= c.max_size:
                    raise QueueCorrupt(f"queue {i} size {c.size} outside 1..{c.max_size}")
                extra = {}
                if restored is not None and restored[i] is not None:
                    s = restored[i]
                    extra = dict(next_avail=s.next_avail, next_used=s.next_used, num_added=s.num_added)
                queues.append(SplitQueue(self.memory, c.size, c.desc, c.avail, c.used,
                                         event_idx=bool(acked & bit(F_EVENT_IDX)),
                                         indirect=bool(acked & bit(F_INDIRECT_DESC)), **extra))
        except QueueCorrupt as e:
            self.fail(e)
            return
        self.device.activate(Activated(self.memory, queues, self.queue_events, self.events,
                                       self._used_signaller(), self.fail))

    def _used_signaller(self):
        """signal_used, or the same in C when the interrupt line is a bare irqfd."""
        if getattr(self.interrupt, "direct", False) and type(self).signal_used is MmioTransport.signal_used:
            return VringSignal(self.fast, self.interrupt.fileno(), INT_VRING)
        return self.signal_used

    def reset(self) -> None:
        """Driver wrote 0 to Status: device back to Inactive, registers to power-on values."""
        self.device.reset()
        self.device.acked_features = 0
        for fd in self.queue_events:
            drain_eventfd(fd)
        self._clear()

    # -- persist ---------------------------------------------------------------------
    def save(self) -> TransportState:
        act = self.device.active
        qstates = []
        for i, c in enumerate(self.queues):
            live = act.queues[i] if act is not None else None
            if live is not None:
                qstates.append(live.state())
            else:
                qstates.append(QueueState(c.size, c.ready, c.desc, c.avail, c.used))
        return TransportState(
            status=int(self.status), acked_features=self.device.acked_features,
            driver_features=self.driver_features, device_features_sel=self.device_features_sel,
            driver_features_sel=self.driver_features_sel, queue_sel=self.queue_sel,
            interrupt_status=self.interrupt_status, config_generation=self.device.config_generation,
            queues=tuple(qstates))

    def restore(self, state: TransportState) -> None:
        """Load saved registers and, if the driver was running, re-activate the device
        with its queues at their saved ring positions (the device's own state first)."""
        self.device.reset()
        self._clear()
        self.status = Status(state.status)
        self.device.acked_features = state.acked_features
        self.driver_features = state.driver_features
        self.device_features_sel, self.driver_features_sel = state.device_features_sel, state.driver_features_sel
        self.queue_sel, self.interrupt_status = state.queue_sel, state.interrupt_status
        self.device.config_generation = state.config_generation
        for c, s in zip(self.queues, state.queues):
            c.size, c.ready, c.desc, c.avail, c.used = s.size, s.ready, s.desc_addr, s.avail_addr, s.used_addr
        if self.status & S.DRIVER_OK and not self.status & (S.FAILED | S.DEVICE_NEEDS_RESET):
            self._activate(restored=tuple(s if s.ready else None for s in state.queues))


def _set_half(old: int, high: bool, value: int) -> int:
    if high:
        return (old & 0xFFFFFFFF) | (value << 32)
    return (old & ~0xFFFFFFFF) | value


def cmdline_device(base: int, irq: int, size: int = 0x1000) -> str:
    """The kernel command-line word announcing a device at `base` with GSI `irq`
    (needs CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES in the guest kernel)."""
    return f"virtio_mmio.device={size // 1024}K@{base:#x}:{irq}"
