"""The PIO and MMIO buses: interval maps from guest addresses to devices.

    pio = Bus("pio")
    pio.register(0x3F8, 8, serial)            # a devices.interfaces.BusDevice
    pio.register_constant(0x80, 1, 0xFF)      # cheap probe port, served in C
    pio.lookup(0x3FD)                         # -> (0x3F8, serial) | None  (pure Python)
    pio.fast                                  # the C side the run loop reads (FastBus)

Offsets handed to devices are relative to the registered base. Ranges never overlap
(BusError). A device that has `c_io_handler()` (see vmm/_fast/runloop.pxd) is served
without the GIL; others get `read(offset, size)` / `write(offset, size, value)` calls.
`lookup` is the pure-Python twin of the C lookup; tests run both.
"""
from __future__ import annotations

import bisect
import threading

from vmm.errors import MMError


class BusError(MMError):
    """A device range is invalid or overlaps another one."""


class Bus:
    """One address space (PIO: 16-bit ports; MMIO: 64-bit guest-physical)."""

    def __init__(self, name: str, limit: int = 1 << 64) -> None:
        self.name = name
        self.limit = limit
        self._bases: list[int] = []
        self._ranges: list[tuple[int, int, object, int]] = []  # (base, size, device|None, value)
        self._lock = threading.Lock()
        self._fast = None

    def __repr__(self) -> str:
        return f"Bus({self.name!r}, {len(self._ranges)} ranges)"

    def _insert(self, base: int, size: int, device, value: int) -> None:
        if size <= 0 or base < 0 or base + size > self.limit:
            raise BusError(f"{self.name} range [{base:#x}, +{size:#x}) is invalid")
        with self._lock:
            i = bisect.bisect_left(self._bases, base)
            for j in (i - 1, i):
                if 0 <= j < len(self._ranges):
                    b, s, d, _ = self._ranges[j]
                    if base < b + s and b < base + size:
                        raise BusError(f"{self.name} range [{base:#x}, +{size:#x}) overlaps "
                                       f"[{b:#x}, +{s:#x}) of {d!r}")
            ranges = list(self._ranges)
            ranges.insert(i, (base, size, device, value))
            self._commit(ranges)

    def register(self, base: int, size: int, device) -> None:
        """Attach `device` (BusDevice) at [base, base+size)."""
        if device is None:
            raise BusError("device must not be None (use register_constant)")
        self._insert(base, size, device, 0)

    def register_constant(self, base: int, size: int, value: int = 0xFFFF_FFFF_FFFF_FFFF) -> None:
        """A range whose reads return `value` and whose writes are dropped, in C."""
        self._insert(base, size, None, value)

    def unregister(self, base: int) -> None:
        with self._lock:
            i = bisect.bisect_left(self._bases, base)
            if i == len(self._bases) or self._bases[i] != base:
                raise BusError(f"nothing registered at {self.name} {base:#x}")
            self._commit(self._ranges[:i] + self._ranges[i + 1:])

    def ranges(self) -> list[tuple[int, int, object]]:
        return [(b, s, d) for b, s, d, _ in self._ranges]

    def lookup(self, addr: int, size: int = 1):
        """(base, device) holding [addr, addr+size), or None. Constant ranges give device None."""
        i = bisect.bisect_right(self._bases, addr) - 1
        if i < 0:
            return None
        b, s, d, _ = self._ranges[i]
        if addr - b + size > s:
            return None
        return (b, d)

    # Python twin of the C dispatch (same semantics as RunLoop._dispatch).
    def read(self, addr: int, size: int) -> int:
        hit = self.lookup(addr, size)
        if hit is None:
            return (1 << (8 * size)) - 1
        base, dev = hit
        if dev is None:
            value = self._ranges[bisect.bisect_right(self._bases, addr) - 1][3]
            return value & ((1 << (8 * size)) - 1)
        return dev.read(addr - base, size) & ((1 << (8 * size)) - 1)

    def write(self, addr: int, size: int, value: int) -> None:
        hit = self.lookup(addr, size)
        if hit is not None and hit[1] is not None:
            hit[1].write(addr - hit[0], size, value)

    @property
    def fast(self):
        """The FastBus the C run loop reads (created on first use, kept in sync)."""
        with self._lock:
            if self._fast is None:
                from vmm._fast.runloop import FastBus

                fast = FastBus()
                fast.set_ranges(list(self._ranges))
                self._fast = fast
            return self._fast

    def _commit(self, ranges: list) -> None:
        # The C side first: if it refuses a device, the Python side stays unchanged.
        if self._fast is not None:
            self._fast.set_ranges(ranges)
        self._ranges = ranges
        self._bases = [r[0] for r in ranges]


def pio_bus() -> Bus:
    return Bus("pio", limit=1 << 16)


def mmio_bus() -> Bus:
    return Bus("mmio")
