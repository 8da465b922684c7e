"""Guest RAM: one memfd, mapped MAP_SHARED once, exposed to KVM as one or two slots.

Layout (x86): RAM fills guest-physical [0, min(size, 3 GiB)); anything beyond goes
above the 32-bit MMIO hole at [4 GiB, 4 GiB + rest). The memfd is contiguous: region
i's bytes live at memfd offset `memfd_offset` (0, then 3 GiB), so snapshot / branch
code can share or map the file directly (`GuestMemory.memfd`).

    mem = GuestMemory(512 << 20, hugepages=None)   # None: THP when the host allows it
    mem.register(vm)              # KVM slots 0 (and 1)
    mem.write(0x1000, b"...")     # bounds-checked; GuestMemoryError when outside RAM
    mem.read(gpa, n); mem.view(gpa, n); mem.host_address(gpa, n)
    mem.regions                   # [Region(slot, gpa, size, host_address, memfd_offset)]
    mem.e820()                    # [(addr, size, E820_RAM | E820_RESERVED)] for boot_params
    mem.set_dirty_logging(vm, True); mem.dirty_pages(vm, slot)

Implements `devices.interfaces.GuestMemory`.
"""
from __future__ import annotations

import ctypes as C
import mmap
import os
from collections import namedtuple

from devices.errors import GuestMemoryError
from vmm.errors import ConfigError, HostError

PAGE_SIZE = 4096
MiB = 1 << 20
GiB = 1 << 30
MMIO_HOLE_START = 3 * GiB      # RAM below this; [3 GiB, 4 GiB) is for devices/LAPIC/IOAPIC
MMIO_HOLE_END = 4 * GiB
MIN_SIZE = 1 * MiB             # small enough for tiny test guests
HUGE_PAGE_SIZE = 2 * MiB

# Legacy low-memory layout the Linux boot protocol expects in e820.
EBDA_START = 0x9FC00
HIGH_MEMORY_START = 0x100000
E820_RAM = 1
E820_RESERVED = 2

THP_SHMEM = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"  # a str: pathlib costs start-up
THP_MODES = ("always", "within_size", "advise", "force")  # modes where MADV_HUGEPAGE works

__all__ = ["GuestMemory", "GuestMemoryError", "Region", "MMIO_HOLE_START", "MMIO_HOLE_END",
           "E820_RAM", "E820_RESERVED", "thp_available"]


# A namedtuple rather than a dataclass: dataclasses pull in `inspect`, ~5 ms of worker start.
class Region(namedtuple("Region", "slot gpa size host_address memfd_offset")):
    """One KVM slot: guest-physical [gpa, gpa+size) at host_address / memfd_offset."""

    __slots__ = ()

    @property
    def end(self) -> int:
        return self.gpa + self.size


def layout(size: int) -> list[tuple[int, int, int]]:
    """(gpa, size, memfd_offset) of each RAM region for `size` bytes of RAM."""
    low = min(size, MMIO_HOLE_START)
    regions = [(0, low, 0)]
    if size > low:
        regions.append((MMIO_HOLE_END, size - low, low))
    return regions


def _thp_shmem_mode() -> str:
    try:
        with open(THP_SHMEM) as f:
            text = f.read()
    except OSError:
        return "missing"
    return text[text.index("[") + 1:text.index("]")] if "[" in text else text.strip()


def thp_available() -> bool:
    """Whether MADV_HUGEPAGE on a memfd mapping gets transparent huge pages here."""
    return _thp_shmem_mode() in THP_MODES


def _want_hugepages(size: int, hugepages: bool | None) -> bool:
    if hugepages is None:   # auto: what the host allows, for sizes THP can cover
        return size % HUGE_PAGE_SIZE == 0 and thp_available()
    if hugepages:
        if size % HUGE_PAGE_SIZE:
            raise ConfigError(f"guest memory size {size} is not a multiple of 2 MiB",
                              "huge pages need a 2 MiB multiple")
        mode = _thp_shmem_mode()
        if mode not in THP_MODES:
            raise HostError(f"transparent huge pages for shared memory are '{mode}'",
                            f"echo advise > {THP_SHMEM}, or run without huge pages")
    return bool(hugepages)


class GuestMemory:
    """memfd-backed guest RAM of `size` bytes (page multiple, >= 1 MiB).

    `hugepages`: True requires transparent huge pages (HostError when the host's shmem
    THP setting forbids them), False never asks, None asks when the host allows it. They
    matter for boot time: KVM maps guest memory in 2 MiB steps only where the host
    mapping is huge, and every 4 KiB fault is a VM exit, which nested (the lab) costs
    about as much as the guest's own work on that page. `self.hugepages` is what was
    chosen."""

    def __init__(self, size: int, hugepages: bool | None = False, name: str = "mm-guest-ram") -> None:
        if not isinstance(size, int) or size < MIN_SIZE or size % PAGE_SIZE:
            raise ConfigError(f"guest memory size {size!r} is invalid",
                              "use a multiple of 4 KiB, at least 1 MiB (e.g. 512M)")
        hugepages = _want_hugepages(size, hugepages)
        self.size = size
        self.hugepages = hugepages
        from vmm import prepared_ram

        fd = prepared_ram.take(size, hugepages)  # a fork server's spare made it: its first pages exist
        self.memfd = os.memfd_create(name, os.MFD_CLOEXEC) if fd is None else fd
        try:
            os.ftruncate(self.memfd, size)
            self._map = mmap.mmap(self.memfd, size, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            os.close(self.memfd)
            raise HostError(f"cannot map {size >> 20} MiB of guest memory: {e.strerror}",
                            "lower --memory or free host memory") from None
        if hugepages:
            self._map.madvise(mmap.MADV_HUGEPAGE)
        self._view = memoryview(self._map)
        self.base_address = C.addressof(C.c_char.from_buffer(self._map))
        self.regions = [Region(i, gpa, sz, self.base_address + off, off)
                        for i, (gpa, sz, off) in enumerate(layout(size))]
        self._dirty_logging = [False] * len(self.regions)

    # -- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        if self.memfd < 0:
            return
        self._view.release()
        try:
            self._map.close()
        except BufferError:
            # A C-level export (e.g. host_address users) still holds the mapping; the
            # kernel frees it when the process ends.
            pass
        os.close(self.memfd)
        self.memfd = -1

    def __enter__(self) -> "GuestMemory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- KVM ------------------------------------------------------------------------------
    def register(self, vm, dirty_logging: bool = False) -> None:
        """Install every region as a KVM memory slot of `vm`."""
        for r in self.regions:
            self._set_slot(vm, r, dirty_logging)

    def _set_slot(self, vm, r: Region, dirty: bool) -> None:
        from vmm.kvm.abi import KVM_MEM_LOG_DIRTY_PAGES

        vm.set_user_memory_region(r.slot, r.gpa, r.size, r.host_address,
                                  KVM_MEM_LOG_DIRTY_PAGES if dirty else 0)
        self._dirty_logging[r.slot] = dirty

    def set_dirty_logging(self, vm, enabled: bool, slot: int | None = None) -> None:
        """Switch dirty-page logging on/off for one slot or all of them."""
        for r in self.regions:
            if slot is None or r.slot == slot:
                self._set_slot(vm, r, enabled)

    def dirty_logging(self, slot: int) -> bool:
        return self._dirty_logging[slot]

    def dirty_pages(self, vm, slot: int) -> list[int]:
        """Guest-physical addresses of pages written since the last call (clears the log)."""
        r = self.regions[slot]
        if not self._dirty_logging[slot]:
            raise ConfigError(f"dirty logging is off for memory slot {slot}",
                              "call set_dirty_logging(vm, True) first")
        bitmap = vm.get_dirty_log(slot, r.size // PAGE_SIZE)
        out = []
        for byte_i, byte in enumerate(bitmap):
            while byte:
                bit = (byte & -byte).bit_length() - 1
                out.append(r.gpa + (byte_i * 8 + bit) * PAGE_SIZE)
                byte &= byte - 1
        return out

    # -- translation ------------------------------------------------------------------------
    def _offset(self, gpa: int, length: int) -> int:
        """memfd/mapping offset of [gpa, gpa+length), which must lie inside one region."""
        if length < 0 or gpa < 0:
            raise GuestMemoryError(f"bad guest range gpa={gpa:#x} length={length}")
        for r in self.regions:
            if r.gpa <= gpa and gpa + length <= r.end:
                return r.memfd_offset + (gpa - r.gpa)
        raise GuestMemoryError(f"guest range [{gpa:#x}, {gpa + length:#x}) is outside guest RAM")

    def read(self, gpa: int, length: int) -> bytes:
        off = self._offset(gpa, length)
        return self._view[off:off + length].tobytes()

    def write(self, gpa: int, data: bytes) -> None:
        off = self._offset(gpa, len(data))
        self._view[off:off + len(data)] = data

    def view(self, gpa: int, length: int) -> memoryview:
        off = self._offset(gpa, length)
        return self._view[off:off + length]

    def host_address(self, gpa: int, length: int) -> int:
        return self.base_address + self._offset(gpa, length)

    def read_u64(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 8), "little")

    def write_u64(self, gpa: int, value: int) -> None:
        self.write(gpa, value.to_bytes(8, "little"))

    # -- for the boot code --------------------------------------------------------------
    def e820(self) -> list[tuple[int, int, int]]:
        """(addr, size, type) entries: low RAM below the EBDA, the legacy BIOS area
        reserved, RAM from 1 MiB to the hole, RAM above 4 GiB."""
        low_end = self.regions[0].end
        entries = [(0, min(EBDA_START, low_end), E820_RAM)]
        if low_end > HIGH_MEMORY_START:
            entries.append((EBDA_START, HIGH_MEMORY_START - EBDA_START, E820_RESERVED))
            entries.append((HIGH_MEMORY_START, low_end - HIGH_MEMORY_START, E820_RAM))
        for r in self.regions[1:]:
            entries.append((r.gpa, r.size, E820_RAM))
        return entries
