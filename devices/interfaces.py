"""The narrow interfaces through which a device reaches the VMM (and nothing else).

A device receives these at construction or activation; it never imports `vmm`.
The VMM side implements them (guest memory, irq lines / irqfds, the event loop), and
tests implement them with plain Python objects.
"""
from __future__ import annotations

from typing import Callable, Protocol


class GuestMemory(Protocol):
    """Guest-physical memory. Every access is bounds-checked; out-of-range raises
    `GuestMemoryError` (a ValueError) instead of touching host memory."""

    size: int

    def read(self, gpa: int, length: int) -> bytes: ...

    def write(self, gpa: int, data: bytes) -> None: ...

    def view(self, gpa: int, length: int) -> memoryview:
        """A writable zero-copy view of [gpa, gpa+length), which must lie in one region."""
        ...

    def host_address(self, gpa: int, length: int) -> int:
        """Host virtual address of [gpa, gpa+length) for C code; checked like view()."""
        ...


# Defined in devices.errors (importable without `typing`), the same class here.
from devices.errors import GuestMemoryError  # noqa: E402


class InterruptLine(Protocol):
    """An edge-triggered interrupt into the guest (an irqfd, or irq_line pulses).

    A line whose trigger() does nothing but write 1 to fileno() says so with a true
    `direct` attribute: C code may then write the eventfd itself (virtio's VringSignal)."""

    def trigger(self) -> None: ...

    def fileno(self) -> int:
        """The eventfd behind it (-1 if none) so C code can signal without Python."""
        ...


class EventRegistry(Protocol):
    """The VMM's event loop: call `callback` when `fd` is readable."""

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None: ...

    def remove_reader(self, fd: int) -> None: ...


class BusDevice(Protocol):
    """Something on the PIO or MMIO bus. `offset` is relative to the registered base."""

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...
